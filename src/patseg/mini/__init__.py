"""OVSS-mini: a generated world of named concepts (``world``, ``scenes``), its pretrained mini CLIP
(``clip_pretrain``) and the SAN-vs-PAT zero-shot benchmark on it (``benchmark``)."""
