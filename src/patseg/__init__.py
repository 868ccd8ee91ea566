"""patseg: PAT and SAN for open-vocabulary semantic segmentation."""
