"""OVSS-mini: the open-vocabulary segmentation protocol at toy scale, generated and run entirely on a CPU.

1. A procedural world (``patseg.mini.scenes``) with named "stuff" textures and coloured "things".
2. A tiny CLIP pretrained contrastively on (scene, caption) pairs covering *all* concepts
   (``patseg.mini.clip_pretrain``), cached per world.
3. ``san_tiny`` and ``pat_tiny`` on that frozen CLIP, trained for segmentation on the *seen* concepts only
   (unseen pixels are ignored), then evaluated zero-shot on scenes with every concept (``patseg.mini.evaluate``):
   mIoU and boundary IoU on seen, unseen and all classes, hIoU, and PAT's reconstruction and codebook usage.
4. A control that shows the open-vocabulary mechanism is at work: SAN with the CLIP text embeddings replaced by
   fixed random vectors (``RandomTextEncoder``), trained and evaluated the same way; its unseen mIoU should collapse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from patseg.build import build_model
from patseg.config import load_preset
from patseg.engine.train_config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    ModelChoice,
    SolverConfig,
    TrainConfig,
)
from patseg.engine.trainer import train
from patseg.mini.clip_pretrain import MODEL_NAME, RECIPE, load_or_pretrain_mini_clip
from patseg.mini.evaluate import MiniClipEmbedder, evaluate_mini
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig, world_hash
from patseg.models.san.model import SAN
from patseg.paths import portable_path

# The mini CLIP has 6 blocks like the tiny test CLIP: taps at 0 and 2/3/4, recognition blocks 4-5.
MINI_CLIP = {"clip.model_name": MODEL_NAME, "clip.quick_gelu": True, "clip.taps": [0, 2, 3, 4], "clip.rec_start": 4}


@dataclass(frozen=True)
class MiniRun:
    """One row of the results table: a preset with overrides, optionally with random text embeddings.

    ``group`` places an ablation in the paper's Table II layout; ``first_seed_only`` runs it for the first seed only
    (the control, whose point one seed makes)."""

    name: str
    preset: str
    overrides: dict = field(default_factory=dict)
    random_text: bool = False
    group: str = ""
    first_seed_only: bool = False


DEFAULT_RUNS = (
    MiniRun("SAN", "san_tiny"),
    MiniRun("PAT", "pat_tiny"),
    MiniRun("SAN, random text (control)", "san_tiny", random_text=True, first_seed_only=True),
)


@dataclass(frozen=True)
class MiniSettings:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    image_size: int = 128
    train_scenes: int = 4000
    val_scenes: int = 200
    iters: int = 450  # the full run (5 seeds x 3 models) stays under 30 minutes on 2 cores
    batch_size: int = 8
    lr: float = 1e-3
    clip_steps: int = RECIPE.steps  # only when a world's mini CLIP is not cached yet; the cache keeps the first one
    threads: int | None = None  # torch intra-op threads; None keeps torch's default (the machine's cores)


FULL = MiniSettings()
QUICK = replace(FULL, seeds=(0,), iters=250, val_scenes=100)


class RandomTextEncoder(nn.Module):
    """Stand-in for the text tower: a fixed random unit vector per class name (seeded by the name's hash)."""

    _device_probe: Tensor

    def __init__(self, dim: int, logit_scale: float) -> None:
        super().__init__()
        self.dim, self._scale = dim, logit_scale
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @property
    def logit_scale(self) -> float:
        return self._scale

    def forward(self, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
        rows = []
        for name in class_names:
            seed = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed)
            rows.append(torch.randn(self.dim, generator=g))
        return nn.functional.normalize(torch.stack(rows), dim=-1).to(self._device_probe.device)


def build_mini_model(run: MiniRun, clip_weights: Path) -> SAN:
    """The run's preset on the pretrained mini CLIP (frozen), optionally with random text embeddings."""
    cfg = load_preset(run.preset, {**MINI_CLIP, **run.overrides})
    model = build_model(cfg, clip_weights=str(clip_weights))
    if run.random_text:
        # Duck-typed: SAN calls the text tower and reads its logit_scale, which the stand-in has.
        model.text = RandomTextEncoder(model.clip.out_dim, model.text.logit_scale)  # type: ignore[assignment]
    return model


def train_config(settings: MiniSettings, run: MiniRun, seed: int, out_dir: Path) -> TrainConfig:
    return TrainConfig(
        model=ModelChoice(preset=run.preset, overrides=dict(run.overrides)),
        data=DataConfig(dataset="ovss_mini", root=str(out_dir), crop_size=settings.image_size, workers=0),
        solver=SolverConfig(
            lr=settings.lr, iters=settings.iters, batch_size=settings.batch_size, grad_clip=1.0, amp="off", seed=seed
        ),
        checkpoint=CheckpointConfig(period=settings.iters, keep_last=1),
        log=LogConfig(period=max(1, settings.iters // 20), image_period=settings.iters),
        eval=EvalConfig(period=10 * settings.iters, datasets=()),
        output_dir=str(out_dir),
    )


def run_one(
    run: MiniRun,
    seed: int,
    world: WorldConfig,
    settings: MiniSettings,
    clip_weights: Path,
    out_dir: Path,
    embedder: MiniClipEmbedder | None = None,
) -> tuple[SAN, dict]:
    """Train one model on the seen concepts and evaluate it zero-shot on all of them.

    The scenes and their order depend on the seed only (the renderer is seeded per scene, the trainer's sampler by
    the seed), so two runs with one seed, SAN and PAT say, see the same data: their results pair up."""
    torch.manual_seed(seed)
    model = build_mini_model(run, clip_weights)
    seen = world.seen_names
    data = SyntheticSegmentation(world, "train", settings.train_scenes, settings.image_size, seed, concepts=seen)
    result = train(train_config(settings, run, seed, out_dir), model, data, seen)
    metrics = evaluate_mini(model, world, settings.val_scenes, settings.image_size, embedder)
    metrics["final_train_loss"] = result.losses.get("total", float("nan"))
    return model, metrics


def run_benchmark(
    settings: MiniSettings,
    out_dir: Path,
    runs: Sequence[MiniRun] = DEFAULT_RUNS,
    world: WorldConfig | None = None,
    on_model: Callable | None = None,
) -> dict:
    """Every run for every seed (``first_seed_only`` runs: the first); returns {"world", "clip_weights", "settings",
    "results": {run name: [metrics per seed]}}. ``clip_weights`` is recorded by :func:`patseg.paths.portable_path`
    (``patseg/...`` for the shipped mini CLIP, ``$PATSEG_CACHE/...`` for a cached one), so the record holds no
    absolute path of this machine."""
    world = world or WorldConfig()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    clip_weights = load_or_pretrain_mini_clip(world, steps=settings.clip_steps)
    embedder = MiniClipEmbedder(clip_weights)
    results: dict[str, list[dict]] = {run.name: [] for run in runs}
    for seed in settings.seeds:
        for run in runs:
            if run.first_seed_only and seed != settings.seeds[0]:
                continue
            run_dir = out_dir / "runs" / f"{run.preset}-{_slug(run.name)}-seed{seed}"
            model, metrics = run_one(run, seed, world, settings, clip_weights, run_dir, embedder)
            metrics["seed"] = seed
            results[run.name].append(metrics)
            if on_model is not None:
                on_model(run, seed, model)
    return {
        "world": world.name,
        "world_hash": world_hash(world),
        "clip_weights": portable_path(clip_weights),
        "results": results,
        "settings": {k: v for k, v in settings.__dict__.items()},
    }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
