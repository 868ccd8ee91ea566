"""The training loop: AdamW + poly schedule, autocast, accumulation, clipping, logging, checkpoints, eval.

One process per GPU under torchrun (nanoGPT's recipe, see :mod:`patseg.distributed`)::

    patseg train cfg.yaml                                   # one GPU or CPU
    torchrun --standalone --nproc_per_node=4 -m patseg train cfg.yaml
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 -m patseg train ...

Resume follows detectron2's ``resume_or_load``: with ``resume=True`` and a ``last_checkpoint`` in ``output_dir``
everything (model, optimizer, schedule, scaler, sampler position, RNG of every rank) comes from the checkpoint and
``cfg.model.weights`` is ignored; otherwise only ``cfg.model.weights`` (if set) is loaded and training starts at 0.
The class text embeddings are computed after that load, so they come from the weights being trained (and, under
DDP, from rank 0's broadcast weights on every rank). A resume drops the log records (``metrics.jsonl`` rows and
TensorBoard events) written after the checkpoint it starts from, so the resumed run does not log those steps twice.
The data iterator restarts at every checkpoint boundary with seeds derived from (seed, rank, iteration), so a
resumed run sees the same batches, augmentations included, as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from patseg import distributed as D
from patseg.atomic import atomic_write_text
from patseg.config import ConfigError, to_dict
from patseg.engine.checkpoint import (
    POINTER_FILE,
    TrainState,
    capture_rng_state,
    last_checkpoint,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    save_checkpoint,
)
from patseg.engine.schedule import PolySchedule, build_param_groups
from patseg.engine.train_config import TrainConfig, dump_train_config
from patseg.engine.writers import METRICS_FILE, ProgressBar, TrainingWriter
from patseg.errors import UsageError
from patseg.models.outputs import StepOutput, Visual

logger = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module, int], dict]  # (plain model, iterations completed) -> metrics

LOG_DIR = "logs"  # under output_dir: TensorBoard event files and metrics.jsonl
CONFIG_FILE = "config.yaml"


class TrainableModel(Protocol):
    """What the loop calls on the model besides ``nn.Module``'s own methods (SAN and PAT implement it)."""

    def training_losses(
        self, images: Tensor, labels: Tensor, class_embeddings: Tensor, *, ignore_index: int
    ) -> StepOutput: ...

    def encode_vocabulary(self, class_names: Sequence[str]) -> Tensor: ...


@dataclass
class TrainResult:
    iteration: int  # optimizer steps completed
    losses: dict[str, float]  # the last logged loss terms (mean over ranks), "total" included
    lr: float  # learning rate of the last step
    checkpoint: Path | None  # the last checkpoint folder of this call (written by rank 0), None if none


class _LossForward(nn.Module):
    """Routes ``training_losses`` through ``forward``: DDP only syncs gradients for calls of its forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, labels: Tensor, class_embeddings: Tensor, ignore_index: int) -> StepOutput:
        model = cast(TrainableModel, self.model)
        return model.training_losses(images, labels, class_embeddings, ignore_index=ignore_index)


@dataclass
class _Run:
    """Everything the loop reads, built once by :func:`_setup`."""

    cfg: TrainConfig
    info: D.DistInfo
    device: torch.device
    model: nn.Module  # the plain module: saved, evaluated
    forward: nn.Module  # _LossForward, DDP-wrapped when world_size > 1
    optimizer: torch.optim.Optimizer
    schedule: PolySchedule
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    class_embeddings: Tensor  # (C, D); empty until _resume_or_load has loaded the weights they come from
    dataset: Dataset
    collate_fn: Callable
    micro_batch: int  # images per rank per forward
    writer: TrainingWriter | None


@dataclass
class _Step:
    losses: dict[str, Tensor]  # this rank's loss terms, averaged over micro-batches
    stats: dict[str, float]
    grad_norm: Tensor
    panels: dict[str, Visual]  # last micro-batch's inputs and the model's visuals
    data_time: float


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device); each rank passes ``solver.seed + rank``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_files(output_dir: str | Path) -> list[str]:
    """What an earlier run left in ``output_dir`` (checkpoints, config, logs), relative names; empty when none."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p.name for p in (out / POINTER_FILE, out / CONFIG_FILE) if p.is_file()]
    found += sorted(p.name for p in out.glob("ckpt_*") if p.is_dir())
    logs = out / LOG_DIR
    if logs.is_dir():
        found += sorted(f"{LOG_DIR}/{p.name}" for p in logs.iterdir() if p.name == METRICS_FILE or "tfevents" in p.name)
    return found


def check_output_dir(output_dir: str | Path, resume: bool) -> None:
    """Refuse to start a fresh run over an earlier one: the user passes ``--resume`` or picks another folder."""
    found = run_files(output_dir)
    if found and not resume:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UsageError(
            f"output_dir {output_dir} already holds a training run ({shown}): pass --resume to continue it, or "
            f"choose another output_dir (--set output_dir=DIR) or delete that folder to start over"
        )


def _micro_batch(cfg: TrainConfig, world_size: int) -> int:
    per_step = world_size * cfg.solver.grad_accum
    if cfg.solver.batch_size % per_step:
        raise ConfigError(
            f"config key 'solver.batch_size' ({cfg.solver.batch_size}) must be divisible by "
            f"world size x solver.grad_accum ({world_size} x {cfg.solver.grad_accum})"
        )
    return cfg.solver.batch_size // per_step


def _autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if device.type != "cuda":
        logger.info("solver.amp=%s ignored: mixed precision is only used on CUDA", amp)
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _setup(
    cfg: TrainConfig,
    model: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    collate_fn: Callable,
    info: D.DistInfo,
    device: torch.device,
) -> _Run:
    micro = _micro_batch(cfg, info.world_size)
    seed_all(cfg.solver.seed + info.rank)
    model.to(device).train()
    optimizer = torch.optim.AdamW(build_param_groups(model, cfg.solver.weight_decay), lr=cfg.solver.lr)
    schedule = PolySchedule(cfg.solver.lr, cfg.solver.iters, cfg.solver.poly_power)
    dtype = _autocast_dtype(cfg.solver.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # bf16 needs no loss scaling
    forward: nn.Module = _LossForward(model)
    if info.enabled:
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    return _Run(
        cfg,
        info,
        device,
        model,
        forward,
        optimizer,
        schedule,
        scaler,
        dtype,
        torch.empty(0),
        dataset,
        collate_fn,
        micro,
        None,
    )


def _class_embeddings(run: _Run, class_names: Sequence[str]) -> Tensor:
    """``(C, D)`` text embeddings of the training classes from the model as loaded (checkpoint or weights)."""
    with torch.no_grad():
        return cast(TrainableModel, run.model).encode_vocabulary(list(class_names)).detach().to(run.device)


def _resume_or_load(run: _Run, resume: bool) -> tuple[int, int]:
    """detectron2 ``resume_or_load``; returns (start iteration, sampler position). RNG is restored last."""
    folder = last_checkpoint(run.cfg.output_dir) if resume else None
    if folder is None:
        if resume:
            logger.warning("--resume: no checkpoint in %s: starting from iteration 0", run.cfg.output_dir)
        if run.cfg.model.weights:
            load_model_weights(run.cfg.model.weights, run.model)
        return 0, 0
    state = load_checkpoint(folder, run.model, run.optimizer)
    run.schedule.load_state_dict(state.schedule)  # the checkpoint's lr wins over the config's
    if run.scaler.is_enabled() and state.scaler is not None:
        run.scaler.load_state_dict(state.scaler)
    if len(state.rng) == run.info.world_size:
        restore_rng_state(state.rng[run.info.rank])
    else:
        logger.warning(
            "checkpoint was written by %d ranks, this run has %d: RNG reseeded, resume is not bitwise",
            len(state.rng),
            run.info.world_size,
        )
        seed_all(run.cfg.solver.seed + run.info.rank + state.iteration)
    logger.info("resumed from %s at iteration %d", folder, state.iteration)
    return state.iteration, state.sampler_position


def _batches(run: _Run, it: int, position: int) -> Iterator[dict[str, Tensor]]:
    """A fresh data iterator at ``position``; its worker seeds depend only on (seed, rank, it)."""
    cfg, info = run.cfg, run.info
    sampler = D.InfiniteSampler(
        len(cast(Sized, run.dataset)), seed=cfg.solver.seed, rank=info.rank, world_size=info.world_size, start=position
    )
    generator = torch.Generator().manual_seed(cfg.solver.seed * 1_000_003 + info.rank * 7_919 + it)
    loader = DataLoader(
        run.dataset,
        batch_size=run.micro_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.data.workers,
        collate_fn=run.collate_fn,
        generator=generator,
        pin_memory=run.device.type == "cuda",
    )
    return iter(loader)


def _train_step(run: _Run, batches: Iterator[dict[str, Tensor]]) -> _Step:
    """One optimizer step over ``grad_accum`` micro-batches; gradients sync on the last one only."""
    accum = run.cfg.solver.grad_accum
    sums: dict[str, Tensor] = {}
    data_time = 0.0
    run.optimizer.zero_grad(set_to_none=True)
    for micro in range(accum):
        tick = time.perf_counter()
        batch = next(batches)
        images = batch["images"].to(run.device, non_blocking=True)
        labels = batch["labels"].to(run.device, non_blocking=True)
        data_time += time.perf_counter() - tick
        last = micro == accum - 1
        # Accumulation steps skip DDP's gradient sync; run.forward is DDP-wrapped whenever distributed is enabled.
        sync = nullcontext() if last or not run.info.enabled else cast(DistributedDataParallel, run.forward).no_sync()
        autocast = torch.autocast(run.device.type, dtype=run.autocast_dtype) if run.autocast_dtype else nullcontext()
        with sync:
            with autocast:
                out: StepOutput = run.forward(images, labels, run.class_embeddings, run.cfg.data.ignore_index)
            run.scaler.scale(out.total / accum).backward()
        for name, value in out.losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() / accum
    run.scaler.unscale_(run.optimizer)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    max_norm = run.cfg.solver.grad_clip if run.cfg.solver.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # full-model L2 norm (SAN CLIP_TYPE full_model)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    panels: dict[str, Visual] = {
        "input/images": images,
        "input/labels": labels,
        **{f"visual/{k}": v for k, v in out.visuals.items()},
    }
    return _Step(sums, dict(out.stats), grad_norm.detach(), panels, data_time)


def _reduced_scalars(step: _Step, it: int, device: torch.device) -> dict[str, float]:
    """Loss terms, stats and grad norm averaged over ranks; every rank calls this at the same iterations."""
    names = sorted(step.losses)
    stat_names = sorted(step.stats)
    values = torch.stack(
        [step.losses[n].to(device) for n in names]
        + [torch.tensor(float(step.stats[n]), device=device) for n in stat_names]
        + [step.grad_norm.float().to(device)]
    )
    reduced = D.all_reduce_mean(values).tolist()
    losses = dict(zip(names, reduced))
    total = sum(losses.values())
    if not np.isfinite(total):  # all ranks see the same reduced value, so all stop together
        raise FloatingPointError(f"loss became {total} at iteration {it}: {losses}")
    scalars = {f"loss/{n}": v for n, v in losses.items()}
    scalars["loss/total"] = total
    scalars.update({f"stats/{n}": v for n, v in zip(stat_names, reduced[len(names) :])})
    scalars["grad_norm"] = reduced[-1]
    return scalars


def _flatten_metrics(metrics: dict, prefix: str = "eval/") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix + str(key)] = float(value)
        else:
            raise TypeError(f"evaluate() must return numbers or nested dicts of numbers; '{key}' is {value!r}")
    return flat


def _run_eval(run: _Run, evaluate: Evaluate, done: int) -> None:
    """Call ``evaluate(model, done)`` on every rank in eval mode, without touching the training RNG streams."""
    rng = capture_rng_state()  # restored after: an evaluator drawing random numbers must not change training
    run.model.eval()
    try:
        with torch.no_grad():
            metrics = evaluate(run.model, done)
    finally:
        run.model.train()
        restore_rng_state(rng)
    if run.writer is not None and metrics:
        run.writer.scalars(_flatten_metrics(metrics), done)


def _save(run: _Run, done: int, position: int) -> Path:
    rng = D.all_gather_json(capture_rng_state(), run.device)  # every rank's streams, for a bitwise resume
    folder = Path(run.cfg.output_dir) / f"ckpt_{done:07d}"
    if run.info.is_main:
        state = TrainState(
            iteration=done,
            sampler_position=position,
            schedule=run.schedule.state_dict(),
            scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
            rng=rng,
            config=to_dict(run.cfg),
        )
        folder = save_checkpoint(
            run.cfg.output_dir,
            run.model,
            run.optimizer,
            state,
            include_frozen=run.cfg.checkpoint.include_frozen,
            keep_last=run.cfg.checkpoint.keep_last,
        )
    return folder


def _loop(run: _Run, start: int, position: int, evaluate: Evaluate | None) -> TrainResult:
    cfg = run.cfg
    bar = ProgressBar(start, cfg.solver.iters, enabled=run.info.is_main)
    batches: Iterator | None = None
    result = TrainResult(start, {}, run.schedule.lr_at(start) if start < cfg.solver.iters else 0.0, None)
    try:
        for it in range(start, cfg.solver.iters):
            if batches is None or it % cfg.checkpoint.period == 0:
                batches = None  # shuts down the previous iterator's workers
                batches = _batches(run, it, position)
            tick = time.perf_counter()
            result.lr = run.schedule.apply(run.optimizer, it)
            step = _train_step(run, batches)
            position += cfg.solver.batch_size
            done = it + 1
            final = done == cfg.solver.iters
            if done % cfg.log.period == 0 or final:
                scalars = _reduced_scalars(step, it, run.device)
                result.losses = {k.removeprefix("loss/"): v for k, v in scalars.items() if k.startswith("loss/")}
                if run.writer is not None:
                    times = {"time/iter": time.perf_counter() - tick, "time/data": step.data_time}
                    run.writer.scalars({**scalars, "lr": result.lr, **times}, done)
            if run.writer is not None and done % cfg.log.image_period == 0:
                run.writer.images(step.panels, done)
            # checkpoint before eval (detectron2's hook order), so a failing eval still leaves a checkpoint
            if done % cfg.checkpoint.period == 0 or final:
                result.checkpoint = _save(run, done, position)
            if evaluate is not None and (done % cfg.eval.period == 0 or final):
                _run_eval(run, evaluate, done)
            result.iteration = done
            bar.update({"loss": result.losses["total"]} if result.losses else None)
    finally:
        bar.close()
    return result


def train(
    cfg: TrainConfig,
    model: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    *,
    evaluate: Evaluate | None = None,
    resume: bool = False,
    collate_fn: Callable[[list[Any]], dict[str, Tensor]] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``cfg.solver.iters`` optimizer steps (see the module docstring).

    Arguments:
        model: implements ``training_losses(images (B,3,H,W), labels (B,H,W), class_embeddings (C,D), *,
            ignore_index) -> StepOutput`` and ``encode_vocabulary(class_names) -> (C, D)``.
        dataset: map-style dataset of dict items; ``collate_fn`` (default ``patseg.data.transforms.collate_semseg``)
            turns a list of them into ``{"images": (B,3,H,W) float [0,1], "labels": (B,H,W) int64}``.
        evaluate: ``evaluate(model, iteration) -> {name: number or nested dict}``, called on every rank (in eval
            mode, under no_grad) every ``cfg.eval.period`` iterations and at the end; rank 0's result is logged.
        resume: continue from ``cfg.output_dir/last_checkpoint`` if there is one.
    """
    if collate_fn is None:
        from patseg.data.transforms import collate_semseg

        collate_fn = collate_semseg
    owns_group = D.detect().enabled and not torch.distributed.is_initialized()
    info, device = D.init_distributed()
    try:
        run = _setup(cfg, model, dataset, class_names, collate_fn, info, device)
        if info.is_main:
            atomic_write_text(Path(cfg.output_dir) / CONFIG_FILE, dump_train_config(cfg))
        start, position = _resume_or_load(run, resume)
        run.class_embeddings = _class_embeddings(run, class_names)
        if info.is_main:  # after the load: a resume drops what was logged past its checkpoint
            run.writer = TrainingWriter(Path(cfg.output_dir) / LOG_DIR, resume_at=start if resume else None)
        try:
            return _loop(run, start, position, evaluate)
        finally:
            if run.writer is not None:
                run.writer.close()
    finally:
        if owns_group:
            D.cleanup()
