"""What a row costs to train, from one training step measured on the CPU.

- FLOPs of one step (forward with every loss, and backward) at batch 1 and the crop size, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` with :mod:`patseg.bench.measure`'s formulas for the fused CPU
  attention kernels (2 FLOPs per multiply-add; element-wise work is not counted).
- Activation memory: the bytes autograd saves for backward in that step (``saved_tensors_hooks``), counting each
  storage once and leaving out tensors that existed before the step (weights, inputs).

The step on the whole batch is linear in the batch, so a run costs ``step FLOPs x global batch x iterations``; at
``peak x utilisation`` FLOP/s that is its GPU-hours, whatever the number of GPUs. Memory per GPU adds float32
weights, gradients and AdamW's two moments of the trainable parameters (16 bytes each), the frozen weights (4
bytes each) and the activations of the per-GPU batch. Measurements are cached by the resolved model config.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from patseg.atomic import atomic_write_json
from patseg.config import ModelConfig, to_dict

logger = logging.getLogger(__name__)

NUM_CLASSES = 171  # COCO-Stuff: the training vocabulary
TRAINABLE_BYTES = 16  # float32 weight + gradient + AdamW's exp_avg and exp_avg_sq
FROZEN_BYTES = 4  # float32 weight
CACHE_FILE = "estimates.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class StepCost:
    """One training step of one model at batch 1, measured."""

    flops: float  # forward + backward
    activation_bytes: int  # saved for backward
    trainable_params: int
    frozen_params: int
    seconds: float  # how long measuring took


@dataclass(frozen=True)
class RunCost:
    """One training run of a row (one seed) under the stated GPU assumptions."""

    step: StepCost
    iters: int
    global_batch: int
    gpus: int
    gpu_tflops: float  # dense peak of one GPU, TFLOP/s
    mfu: float  # fraction of the peak a training step sustains

    @property
    def total_flops(self) -> float:
        return self.step.flops * self.global_batch * self.iters

    @property
    def gpu_hours(self) -> float:
        return self.total_flops / (self.gpu_tflops * 1e12 * self.mfu) / 3600

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus

    @property
    def per_gpu_batch(self) -> int:
        return self.global_batch // self.gpus

    @property
    def state_bytes(self) -> int:
        return TRAINABLE_BYTES * self.step.trainable_params + FROZEN_BYTES * self.step.frozen_params

    @property
    def memory_bytes(self) -> int:
        return self.state_bytes + self.step.activation_bytes * self.per_gpu_batch


def cache_key(model: ModelConfig, crop_size: int) -> str:
    """Key of a measurement: the resolved model record, the crop and the torch version."""
    import torch

    record = {"model": to_dict(model), "crop": crop_size, "classes": NUM_CLASSES, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


class EstimateCache:
    """``OUT/estimates.json``: step measurements by :func:`cache_key`, written after each new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                data = None  # a damaged cache is measured again, not an error
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                self.entries = dict(data.get("entries", {}))

    def get(self, key: str) -> StepCost | None:
        entry = self.entries.get(key)
        if not isinstance(entry, dict):
            return None
        try:
            return StepCost(**{k: v for k, v in entry.items() if k != "label"})
        except TypeError:  # written by another version: measured again
            return None

    def put(self, key: str, cost: StepCost, label: str) -> None:
        self.entries[key] = asdict(cost)
        self.entries[key]["label"] = label
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"version": CACHE_VERSION, "entries": self.entries})

    def step_cost(self, model: ModelConfig, crop_size: int, label: str) -> tuple[StepCost, bool]:
        """(the cost, whether it came from the cache); measures and stores it when it is new."""
        key = cache_key(model, crop_size)
        cached = self.get(key)
        if cached is not None:
            return cached, True
        logger.info("measuring one training step of %s (%dx%d, batch 1) on the CPU...", label, crop_size, crop_size)
        cost = measure_step(model, crop_size)
        logger.info(
            "measured %s in %.0f s: %s, %s saved for backward",
            label,
            cost.seconds,
            flops_text(cost.flops),
            bytes_text(cost.activation_bytes),
        )
        self.put(key, cost, label)
        return cost, False


def saved_activation_bytes(step: Callable[[], Any]) -> int:
    """Bytes autograd saves for backward while ``step`` runs: each storage once, pre-existing tensors left out."""
    import torch

    tensors = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]  # type(): no attribute lookups
    existing = {t.untyped_storage().data_ptr() for t in tensors}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage (e.g. sparse)
            return tensor
        ptr = storage.data_ptr()
        if ptr and ptr not in existing:
            seen[ptr] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values())


def measure_step(model_cfg: ModelConfig, crop_size: int, *, seed: int = 0) -> StepCost:
    """FLOPs and saved activations of one training step (forward with every loss, backward) of ``model_cfg``.

    Random weights everywhere (CLIP, and lpips' random VGG trunk for PAT's perceptual term): the arithmetic is the
    real model's. One random image at ``crop_size``, labels in 4 x 4 blocks of the 171 training classes, random
    unit class embeddings.
    """
    import torch
    import torch.nn.functional as F

    from patseg.bench.measure import count_flops  # importing it registers the CPU attention FLOP formulas
    from patseg.build import build_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    reconstruction = getattr(getattr(model, "criterion", None), "reconstruction", None)
    if reconstruction is not None:
        reconstruction.random_trunk = True  # no VGG file needed: the trunk's cost does not depend on its weights
    model.prepare_training()
    model.train()
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, crop_size, crop_size, generator=gen)
    blocks = torch.randint(0, NUM_CLASSES, (1, 4, 4), generator=gen)
    labels = F.interpolate(blocks[:, None].float(), size=(crop_size, crop_size), mode="nearest")[:, 0].long()
    embeddings = F.normalize(torch.randn(NUM_CLASSES, model.clip.out_dim, generator=gen), dim=-1)
    activations = 0

    def step() -> None:
        nonlocal activations

        def forward_backward() -> None:
            model.training_losses(images, labels, embeddings).total.backward()

        activations = saved_activation_bytes(forward_backward)

    flops = count_flops(step)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    return StepCost(flops, activations, trainable, frozen, time.perf_counter() - start)


def flops_text(flops: float) -> str:
    """``1.24 TFLOPs``, ``314 MFLOPs``: three significant digits in the fitting unit."""
    for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}FLOPs"
    return f"{flops:.3g} FLOPs"


def bytes_text(count: float) -> str:
    """``1.86 GB``, ``5.53 MB`` (decimal units)."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.0f} B"


def hours_text(hours: float) -> str:
    """GPU time: ``20.1 GPU-hours``, or seconds below a minute's worth (tiny runs)."""
    return f"{hours:.3g} GPU-hours" if hours >= 1 / 60 else f"{hours * 3600:.2g} GPU-seconds"
