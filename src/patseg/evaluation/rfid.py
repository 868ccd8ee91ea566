"""Reconstruction FID (rFID) of a PAT model: FID between images and their reconstructions through the tokenizer.

Each image is resized so its short side is ``short_side`` (bilinear, antialiased, as the Segmenter resizes), centre-
cropped to ``crop`` x ``crop`` and stored as uint8; that image is the real sample and its reconstruction, rounded to
uint8, the fake one (see :mod:`patseg.evaluation.fid` for the metric). Under torch.distributed each process takes
images ``rank, rank + world_size, ...`` and the metric sums its statistics over processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from patseg.errors import UsageError
from patseg.evaluation.fid import inception_fid, to_uint8
from patseg.models.pat.model import PAT


class RFIDResult(NamedTuple):
    fid: float
    num_images: int  # over all processes


def resize_and_crop(image: Tensor, short_side: int, crop: int) -> Tensor:
    """(3, H, W) uint8 -> (3, crop, crop) uint8: short side scaled to ``short_side``, then the centre crop."""
    h, w = image.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    x = image[None].float() / 255.0
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return to_uint8(x[0, :, top : top + crop, left : left + crop])


@torch.inference_mode()
def reconstruct(model: PAT, images: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> reconstructions (B, 3, H, W) in [0, 1] via ``model.encode`` + ``model.decode``.

    The decoded map never reads the global tokens (they only read it), so decoding without them gives
    ``forward(..., reconstruct=True).reconstruction`` without the side heads, CLIP recognition or a vocabulary.
    """
    quant = model.encode(images)
    codes = {name: quant[name].z_q for name in model.options.decoder_stages}
    return cast(Tensor, model.decode(codes, quant["latent"].z_q, queries=None, reconstruct=True)[2])


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(count: int) -> range:
    """This process's indices among ``range(count)``: every ``world_size``-th from ``rank``."""
    rank, world = _rank_and_world()
    return range(rank, count, world)


def _check_arguments(count: int, short_side: int, crop: int, batch_size: int) -> None:
    if crop % 32 or not 32 <= crop <= short_side:
        raise UsageError(f"rFID crop {crop} must be a multiple of 32 between 32 and the short side {short_side}")
    if batch_size < 1:
        raise UsageError(f"rFID batch size must be at least 1, got {batch_size}")
    world = _rank_and_world()[1]
    if count < max(2, world):
        raise UsageError(
            f"rFID over {count} images on {world} process(es): a covariance needs at least 2 images "
            "and every process at least one"
        )


class ImageItems(Protocol):
    """What the rFID loop reads: a length and items whose ``"image"`` is a (3, H, W) uint8 tensor."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


def reconstruction_fid(
    model: nn.Module,
    dataset: ImageItems,
    *,
    inception_weights: str,
    short_side: int = 640,
    crop: int = 640,
    limit: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> RFIDResult:
    """rFID of ``model`` on the first ``limit`` images of ``dataset`` (all when None); the same on every rank.

    Arguments:
        dataset: items are dicts whose ``"image"`` is a (3, H, W) uint8 tensor (e.g. a SemSegDataset).
        inception_weights: local path of ``pt_inception-2015-12-05-6726825d.pth`` (MissingFileError if absent).
        batch_size: images per reconstruction batch on each process.
        device: where the images and the Inception run; default the model's device (the model is not moved).
    Raises UsageError for a SAN model, a crop that is not a multiple of 32 or exceeds ``short_side``, or fewer
    than two images (or than processes).
    """
    if not isinstance(model, PAT):
        raise UsageError(
            f"rFID needs a PAT model (it reconstructs images); {type(model).__name__} has no reconstruction"
        )
    count = len(dataset) if limit is None else min(limit, len(dataset))
    _check_arguments(count, short_side, crop, batch_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    metric = inception_fid(inception_weights, device)
    indices = list(shard(count))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    is_main = _rank_and_world()[0] == 0
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="rFID", unit="batch", disable=not (progress and is_main)):
            real = torch.stack([resize_and_crop(dataset[i]["image"].to(device), short_side, crop) for i in batch])
            fake = to_uint8(reconstruct(model, real.float() / 255.0))
            metric.update(real, real=True)
            metric.update(fake, real=False)
        fid = float(metric.compute())
    finally:
        model.train(was_training)
    return RFIDResult(fid=fid, num_images=count)
