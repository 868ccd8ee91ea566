"""``patseg demo``: an interactive open-vocabulary segmentation page (Gradio)."""
