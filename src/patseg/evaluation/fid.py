"""FID between two image sets with torchmetrics' ``FrechetInceptionDistance`` on the FID Inception-v3.

The feature extractor is torch-fidelity's port of the TensorFlow FID graph ("inception-2015-12-05": pool3 features,
2048-d), fed uint8 images that it resizes to 299 x 299 with TensorFlow 1.x's bilinear rule, as the original TF
FID code does (``antialias=False``; torchmetrics' default antialiased resize gives other numbers). Its weights are
the state dict pytorch-fid publishes, ``pt_inception-2015-12-05-6726825d.pth`` (the same module names as
torch-fidelity's network), read from a local file: with a path given neither library downloads anything.

torchmetrics keeps float64 sums of the features and of their outer products (summed over processes at
``compute`` when torch.distributed is initialised) and computes
FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 sum_i sqrt(lambda_i(S1 S2)) with unbiased covariances S. Report N with
every number: with N < 2048 images the covariances are rank-deficient and FID is biased upward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from patseg.errors import CheckpointError, MissingFileError

if TYPE_CHECKING:
    from torchmetrics.image.fid import FrechetInceptionDistance

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
# The Inception layer whose features FID compares: pool3 (2048-d), as every published FID. torch-fidelity also
# offers 64, 192 and 768 (earlier pools, much cheaper on CPU).
FID_FEATURES = 2048


def check_inception_weights(path: str | os.PathLike) -> Path:
    """``path`` as a Path once it holds a plain tensor state dict; MissingFileError / CheckpointError otherwise.

    torch-fidelity unpickles the file with ``weights_only=False``, which would run code stored in it; loading it
    here with ``weights_only=True`` first refuses such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"FID Inception weights not found: {path}. Download {FID_WEIGHTS_NAME} once from pytorch-fid's GitHub "
            f"release 'fid_weights' ({FID_WEIGHTS_URL}) and pass its path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means the file is not a plain state dict
        raise CheckpointError(f"{path}: not a readable state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise CheckpointError(f"{path}: not the FID Inception state dict (no 'fc.weight'); expected {FID_WEIGHTS_NAME}")
    return path


def inception_fid(weights: str | os.PathLike, device: torch.device | str | None = None) -> FrechetInceptionDistance:
    """An empty FID metric on ``device`` whose ``update(images, real=...)`` takes (B, 3, H, W) uint8 images.

    ``weights``: the local ``pt_inception-2015-12-05-6726825d.pth``; a missing file raises MissingFileError.
    """
    path = check_inception_weights(weights)
    # imported here: torchmetrics takes seconds to import and only rFID needs it
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        metric = FrechetInceptionDistance(
            feature=FID_FEATURES, normalize=False, antialias=False, feature_extractor_weights_path=str(path)
        )
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen keys
        raise CheckpointError(f"{path}: does not fit the FID Inception ({err})") from err
    return metric.to(device) if device is not None else metric


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) float in [0, 1] -> uint8, rounded to the nearest level as a saved PNG would hold it."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
