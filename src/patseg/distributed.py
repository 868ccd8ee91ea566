"""Multi-process training helpers: torchrun detection, reductions, and an infinite, resumable sampler.

The recipe is nanoGPT's (karpathy/nanoGPT ``train.py``): DDP is on when torchrun set ``RANK``; only rank 0 logs and
saves; each rank seeds with ``seed + rank``; the plain module is what gets saved, never the DDP wrapper.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from patseg.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def detect() -> DistInfo:
    """Read torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; absent ``RANK`` means one process."""
    if "RANK" not in os.environ:
        return DistInfo()
    missing = [n for n in ("WORLD_SIZE", "LOCAL_RANK") if n not in os.environ]
    if missing:
        raise UsageError(f"RANK is set but {', '.join(missing)} is not: launch multi-process runs with torchrun")
    return DistInfo(_env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK"))


def init_distributed() -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU) and pick this rank's device."""
    info = detect()
    if torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info, device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all ranks (a copy; the identity in single-process runs)."""
    out = tensor.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_json(obj: Any, device: torch.device) -> list[Any]:
    """Gather one JSON-able object from every rank, in rank order.

    Objects travel as UTF-8 JSON in uint8 tensors rather than through ``all_gather_object``, which pickles:
    patseg keeps pickle out of everything that touches checkpoints.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    payload = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor(payload.numel(), device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(s.item())].tolist()).decode()) for c, s in zip(chunks, sizes)]


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices, split across ranks, that can start at any position.

    The global stream is the concatenation of one permutation of ``range(size)`` per epoch (epoch ``e`` seeded with
    ``seed`` and ``e``). Rank ``r`` of ``W`` takes global positions ``r, r + W, r + 2W, ...``, so one optimizer step
    of a global batch consumes the same samples whatever the number of ranks, and a run resumes by passing the
    number of samples all ranks consumed so far as ``start`` (a multiple of ``W``). Unlike ``DistributedSampler``,
    no sample is repeated to pad an epoch.
    """

    def __init__(
        self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0, shuffle: bool = True
    ) -> None:
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        if start % world_size:
            raise ValueError(f"start {start} must be a multiple of the world size {world_size}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start, self.shuffle = start, shuffle

    def _epoch_order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        epoch, order = -1, torch.empty(0, dtype=torch.int64)
        while True:
            this_epoch, offset = divmod(position, self.size)
            if this_epoch != epoch:
                epoch, order = this_epoch, self._epoch_order(this_epoch)
            yield int(order[offset])
            position += self.world_size


def barrier() -> None:
    """Wait until every rank gets here (nothing in single-process runs)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
