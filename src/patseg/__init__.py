"""patseg: PAT (Feature Pyramid Tokenization) and SAN for open-vocabulary semantic segmentation.

Example::

    import patseg
    model = patseg.build_model("san_vitb16", clip_weights="ViT-B-16.bin")
    labels = patseg.Segmenter(model, ["sky", "tree", "road"]).predict(rgb_uint8_array)
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "patseg.build",
    "list_presets": "patseg.config",
    "load_preset": "patseg.config",
    "Segmenter": "patseg.predictor",
    "PyramidTokenizer": "patseg.tokenizer",
    "TokenPyramid": "patseg.tokenizer",
}

__all__ = ["PyramidTokenizer", "Segmenter", "TokenPyramid", "build_model", "list_presets", "load_preset"]


def __getattr__(name: str) -> Any:
    # Lazy: `import patseg` stays cheap for the CLI's --help; torch is imported on first use.
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'patseg' has no attribute {name!r}")
