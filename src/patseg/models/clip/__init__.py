"""The frozen CLIP towers (open_clip ViT and EVA-CLIP): image taps and recognition path, prompt-ensembled text."""
