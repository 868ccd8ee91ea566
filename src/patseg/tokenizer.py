"""The detachable multi-scale tokenizer: PAT's pixel branch and decoder used on their own.

``encode`` turns images into integer code maps at four resolutions (early/mid/late from CLIP and the pixel branch,
latent from the side ViT); ``decode`` turns code maps back into images through the decoder alone: the global
tokens (SAN's queries) take no part, so the code maps are the whole description of an image.

    tok = PyramidTokenizer.from_checkpoint("pat.safetensors")
    pyramid = tok.encode(images)          # images (B, 3, H, W) in [0, 1], H and W multiples of 32
    pyramid = tok.encode_image(rgb, 640)  # or one (H, W, 3) uint8 image, resized to multiples of 32
    recon = tok.decode(pyramid)           # (B, 3, H', W') in [0, 1]
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from patseg.atomic import atomic_path
from patseg.errors import MissingFileError, UsageError
from patseg.models.pat.geometry import STAGES
from patseg.models.pat.model import PAT
from patseg.resize import resize_to_multiple

LEVELS = (*STAGES, "latent")


@dataclass
class TokenPyramid:
    """Integer code maps: level (early, mid, late, latent) -> (B, h, w) int64, for inputs of ``image_size``."""

    codes: dict[str, Tensor]
    image_size: tuple[int, int]

    @property
    def grids(self) -> dict[str, tuple[int, int]]:
        return {name: (c.shape[-2], c.shape[-1]) for name, c in self.codes.items()}

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Smallest unsigned integer dtype per level (codebooks hold at most 65,536 codes)."""
        return {
            name: c.cpu().numpy().astype(np.uint16 if int(c.max()) > 255 else np.uint8)
            for name, c in self.codes.items()
        }


class PyramidTokenizer:
    """Wraps a PAT model (in eval mode) as an image tokenizer/detokenizer."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, PAT):
            raise UsageError(f"PyramidTokenizer needs a PAT model, got {type(model).__name__} (SAN has no tokens)")
        self.model = model.eval()

    @classmethod
    def from_checkpoint(
        cls, weights: str, *, preset: str | None = None, clip_weights: str | None = None
    ) -> PyramidTokenizer:
        from patseg.build import build_model

        return cls(build_model(preset, weights=weights, clip_weights=clip_weights))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, images: Tensor) -> TokenPyramid:
        """(B, 3, H, W) in [0, 1], H and W divisible by 32 -> TokenPyramid."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"expected (B, 3, H, W) with H, W multiples of 32, got {tuple(images.shape)}")
        quant = self.model.encode(images.to(self.device))
        return TokenPyramid(
            codes={name: quant[name].indices for name in LEVELS}, image_size=(images.shape[-2], images.shape[-1])
        )

    def encode_image(self, image: np.ndarray, short_side: int = 640) -> TokenPyramid:
        """One (H, W, 3) uint8 RGB image -> TokenPyramid of batch 1. The image is resized with
        :func:`patseg.resize.resize_to_multiple`: short side ``short_side``, both sides rounded to multiples of 32."""
        return self.encode(resize_to_multiple(image, short_side))

    @torch.inference_mode()
    def decode(self, pyramid: TokenPyramid) -> Tensor:
        """TokenPyramid -> (B, 3, H, W) reconstruction in [0, 1]; no global tokens are involved."""
        m = self.model
        stages = {name: stage for name, stage in zip(STAGES, m.pixel_branch.pyramid_stages)}
        codes = {
            name: stages[name].quantizer.lookup(pyramid.codes[name].to(self.device))
            for name in m.options.decoder_stages
        }
        latent = m.pixel_branch.latent_quantizer.lookup(pyramid.codes["latent"].to(self.device))
        recon = m.decode(codes, latent, queries=None, reconstruct=True)[2]
        assert recon is not None  # reconstruct=True
        return recon


def save_pyramids(path: Path, pyramids: list[TokenPyramid], meta: dict) -> None:
    """One .npz for several images: arrays ``{i}/{level}`` and a JSON ``meta`` entry (atomic write)."""
    arrays = {}
    for i, p in enumerate(pyramids):
        for level, a in p.to_numpy().items():
            arrays[f"{i}/{level}"] = a
    meta = dict(meta, count=len(pyramids), image_sizes=[list(p.image_size) for p in pyramids])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # the keys are never "allow_pickle"


def load_pyramids(path: Path) -> tuple[list[TokenPyramid], dict]:
    """Inverse of :func:`save_pyramids` (no pickle: ``allow_pickle=False``).

    Raises:
        MissingFileError: ``path`` does not exist.
        UsageError: ``path`` is not a complete token file (truncated, another .npz, not a zip at all).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"token file not found: {path} (write one with `patseg tokenize`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise UsageError(f"{path}: not a patseg token file (no 'meta' entry; write one with `patseg tokenize`)")
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            pyramids = []
            for i, size in enumerate(meta["image_sizes"]):
                codes = {level: torch.from_numpy(data[f"{i}/{level}"].astype(np.int64)) for level in LEVELS}
                pyramids.append(TokenPyramid(codes=codes, image_size=(int(size[0]), int(size[1]))))
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, zlib.error) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(
            f"{path}: not a readable patseg token file ({type(err).__name__}: {str(err)[:200]}); it may be "
            f"truncated: write it again with `patseg tokenize`"
        ) from None
    return pyramids, meta
