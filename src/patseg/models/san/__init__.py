"""SAN, the baseline and PAT's semantic branch: side ViT, MLP mask decoder, recognition and semantic inference."""
