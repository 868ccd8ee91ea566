"""Measuring where inference and training time goes: latency, peak memory and FLOPs, per stage and end to end.

Everything is measured in one process, side by side, with warm-up runs and the median of several timed runs:

- :func:`measure_all` times callables side by side (each round runs each once), reads their peak memory and
  counts their FLOPs.
- :class:`StageRecorder` runs one real ``Segmenter.predict`` with the model's stage methods wrapped, keeps every
  call's inputs, and :func:`stage_breakdown` then replays each stage alone on those inputs. A stage that runs
  inside another (PAT's semantic branch inside the side ViT) is subtracted from its parent, so the stage times add
  up to the work done; what the end-to-end time has beyond that sum is glue (reshapes, Python, small ops).
- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of matmuls, convolutions
  and attention); the fused CPU attention kernels it has no formula for are given one here (:func:`_register`).

Class embeddings are random unit vectors put into the text encoder's cache: the text tower is excluded by design,
as ``Segmenter`` encodes a vocabulary once and reuses it for every image.
"""
from __future__ import annotations

import contextlib
import ctypes
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from patseg.predictor import Segmenter

aten = torch.ops.aten
_LIBC = ctypes.CDLL(None)  # glibc, for malloc_trim


# ---------------------------------------------------------------------------------------------------- FLOPs
def _register_attention_formulas() -> None:
    """FLOP formulas for the fused attention kernels CPU inference and training dispatch to.

    torch 2.14's counter knows the CUDA SDPA kernels only; without these, CLIP's attention (``nn.MultiheadAttention``
    takes the fused ``_native_multi_head_attention`` path in inference) and every CPU SDPA call would count as zero.
    """
    missing = lambda op: op not in torch.utils.flop_counter.flop_registry  # noqa: E731

    if missing(aten._scaled_dot_product_flash_attention_for_cpu):
        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    if missing(aten._scaled_dot_product_flash_attention_for_cpu_backward):
        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
        def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    if missing(aten._native_multi_head_attention):
        @register_flop_formula(aten._native_multi_head_attention)
        def _native_mha(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None,
                        **kwargs) -> int:
            # (B, L, E) queries, (B, S, E) keys: packed q/k/v projections, the output projection, q k^T and a v.
            b, l, e = query_shape
            s = key_shape[1]
            return 2 * (b * l * e * e + 2 * b * s * e * e + b * l * e * e + 2 * b * l * s * e)


_register_attention_formulas()


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (2 per multiply-add), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------- measuring
@dataclass
class Measurement:
    """median_ms: median of ``runs_ms``; peak_mb: memory above the level before the call (None: not measured);
    gflops: FLOPs of one call / 1e9 (None: not counted)."""

    median_ms: float
    runs_ms: list[float]
    peak_mb: Optional[float] = None
    gflops: Optional[float] = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def cpu_peak_supported() -> bool:
    """Linux lets a process reset its resident-set high-water mark (``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> Optional[float]:
    """Peak memory of one call above the level before it: CUDA allocator peak, or CPU resident-set growth."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not cpu_peak_supported():
        return None
    _LIBC.malloc_trim(0)  # hand freed heap back first, so reused free memory does not hide the growth
    before = _rss_kb("VmRSS")
    fn()
    return max(0, _rss_kb("VmHWM") - before) / 1024


def time_runs(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        runs.append((time.perf_counter() - start) * 1e3)
    return runs


def measure_all(fns: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int = 1, repeats: int = 3,
                memory: bool = True, flops: bool = True) -> dict[str, Measurement]:
    """Time several callables side by side: each round runs every callable once, so load that comes and goes
    on a shared machine hits all of them alike and their ratios stay meaningful. Then, optionally, one call each
    for peak memory and for FLOPs."""
    for fn in fns.values():
        time_runs(fn, device, warmup=0, repeats=warmup)
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name] += time_runs(fn, device, warmup=0, repeats=1)
    return {name: Measurement(median_ms=statistics.median(runs[name]), runs_ms=[round(r, 2) for r in runs[name]],
                              peak_mb=peak_memory_mb(fn, device) if memory else None,
                              gflops=count_flops(fn) / 1e9 if flops else None)
            for name, fn in fns.items()}


def measure(fn: Callable[[], Any], device: torch.device, **kwargs: Any) -> Measurement:
    """Median time of one callable (see :func:`measure_all`)."""
    return measure_all({"fn": fn}, device, **kwargs)["fn"]


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain float32 on CPU (CPU bf16 matmuls are slower than float32 on most hosts)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------- stages
@dataclass
class _Call:
    stage: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    parent: Optional[str]


class StageRecorder:
    """Wraps methods of live objects for the duration of a ``with`` block and records each call's inputs.

    Arguments:
        targets: stage name -> (object, method name) pairs; one stage may gather several methods.
    The wrappers are instance attributes shadowing the class methods; leaving the block removes them.
    """

    def __init__(self, targets: dict[str, list[tuple[object, str]]]) -> None:
        self.targets = targets
        self.calls: list[_Call] = []
        self._stack: list[str] = []
        self._patched: list[tuple[object, str]] = []

    def _wrap(self, stage: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(_Call(stage, original, args, kwargs, self._stack[-1] if self._stack else None))
            self._stack.append(stage)
            try:
                return original(*args, **kwargs)
            finally:
                self._stack.pop()
        return recorded

    def __enter__(self) -> "StageRecorder":
        for stage, pairs in self.targets.items():
            for obj, name in pairs:
                if name in vars(obj):
                    raise RuntimeError(f"{type(obj).__name__}.{name} is already patched on this instance")
                object.__setattr__(obj, name, self._wrap(stage, getattr(obj, name)))
                self._patched.append((obj, name))
        return self

    def __exit__(self, *exc: Any) -> None:
        for obj, name in self._patched:
            object.__delattr__(obj, name)
        self._patched.clear()

    def replay(self, stage: str) -> Callable[[], None]:
        """A callable that runs every recorded call of ``stage`` again, on the recorded inputs."""
        calls = [c for c in self.calls if c.stage == stage]

        def run() -> None:
            for c in calls:
                c.fn(*c.args, **c.kwargs)
        return run

    def stages(self) -> list[str]:
        """Stages that were called, in first-call order."""
        return list(dict.fromkeys(c.stage for c in self.calls))

    def parent(self, stage: str) -> Optional[str]:
        """The stage every call of ``stage`` ran inside (None: top level)."""
        parents = {c.parent for c in self.calls if c.stage == stage}
        if len(parents) != 1:
            raise RuntimeError(f"stage {stage} runs inside several stages {parents}: split it")
        return parents.pop()


def stage_targets(seg: Segmenter) -> dict[str, list[tuple[object, str]]]:
    """The parts of SAN and PAT inference, named as the papers name them; parts a model lacks are left out."""
    model = seg.model
    t: dict[str, list[tuple[object, str]]] = {
        "preprocess": [(seg, "_prepare"), (model, "preprocess")],
        "clip_taps": [(model.clip, "extract")],
        "side_vit": [(model.side, "forward")],
        "mask_decoder": [(model.mask_decoder, "forward")],
        "recognition": [(model.clip, "recognize")],
        "classify": [(model, "classify")],
        "post_processing": [(seg, "postprocess")],
    }
    branch = getattr(model, "pixel_branch", None)
    if branch is not None:
        t["pyramid_pixel"] = [(branch, "encode_stages")]
        t["pyramid_semantic"] = [(stage, "semantic") for stage in branch.stages]
        t["latent_vq"] = [(branch, "quantize_latent")]
        t["shared_decoder"] = [(model, "decode")]
        t["mask_decoder"].append((model.mask_head, "forward"))
    return t


@dataclass
class Breakdown:
    """end_to_end: ``Segmenter.predict``; stages: each part alone, nested parts subtracted from their parent;
    glue_ratio: end-to-end time / sum of the stage times (1.0 = the parts are all there is)."""

    end_to_end: Measurement
    stages: dict[str, Measurement]
    stage_sum_ms: float
    glue_ratio: float
    nesting: dict[str, str] = field(default_factory=dict)


def stage_breakdown(seg: Segmenter, image: np.ndarray, device: torch.device, *, warmup: int,
                    repeats: int) -> Breakdown:
    """End-to-end ``predict`` and every stage replayed alone (exclusive times, memory and FLOPs)."""
    def predict() -> None:
        with precision(device):
            seg.predict(image)

    recorder = StageRecorder(stage_targets(seg))
    with recorder, precision(device):
        seg.predict(image)

    def replay(stage: str) -> Callable[[], None]:
        run = recorder.replay(stage)

        def timed() -> None:
            with torch.inference_mode(), precision(device):
                run()
        return timed

    fns = {"end_to_end": predict, **{stage: replay(stage) for stage in recorder.stages()}}
    inclusive = measure_all(fns, device, warmup=warmup, repeats=repeats)
    end_to_end = inclusive.pop("end_to_end")
    nesting = {s: p for s in inclusive if (p := recorder.parent(s)) is not None}
    stages = {}
    for stage, m in inclusive.items():
        children = [inclusive[c] for c, p in nesting.items() if p == stage]
        stages[stage] = Measurement(
            median_ms=m.median_ms - sum(c.median_ms for c in children), runs_ms=m.runs_ms, peak_mb=m.peak_mb,
            gflops=m.gflops - sum(c.gflops for c in children))
    total = sum(m.median_ms for m in stages.values())
    return Breakdown(end_to_end=end_to_end, stages=stages, stage_sum_ms=total,
                     glue_ratio=end_to_end.median_ms / total, nesting=nesting)


# ---------------------------------------------------------------------------------------------------- set-up
def cached_vocabulary(model: nn.Module, num_classes: int, *, seed: int = 0) -> list[str]:
    """Names ``class 0..C-1`` whose embeddings are random unit vectors placed in the text encoder's memory cache,
    so a Segmenter built on them skips the text tower (its cost is excluded by design)."""
    names = [f"class {i}" for i in range(num_classes)]
    gen = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(num_classes, model.clip.out_dim, generator=gen), dim=-1)
    model.text._memory[(tuple(names), tuple(model.templates))] = emb
    return names


def random_image(h: int, w: int, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def make_segmenter(model: nn.Module, num_classes: int, image_hw: tuple[int, int]) -> Segmenter:
    """A Segmenter that keeps ``image_hw`` as it is (short side = the image's, long side up to 4x)."""
    short = min(image_hw)
    return Segmenter(model, cached_vocabulary(model, num_classes), short_side=short, max_long_side=4 * short)


def clip_encoder(model: nn.Module, image_hw: tuple[int, int], device: torch.device, *, warmup: int,
                 repeats: int) -> Measurement:
    """The bare frozen CLIP image encoder at SAN's CLIP input size (the image scaled by ``resize_ratio``)."""
    h, w = (round(s * model.resize_ratio) for s in image_hw)
    x = torch.randn(1, 3, h, w, device=device)

    def run() -> None:
        with torch.inference_mode(), precision(device):
            model.clip.encode_image(x)
    return measure(run, device, warmup=warmup, repeats=repeats)


def train_step(model: nn.Module, image_size: int, device: torch.device, *, num_classes: int = 150,
               warmup: int, repeats: int) -> Measurement:
    """One optimizer step: forward with every loss, backward and AdamW, on one random image with block labels."""
    model.train()
    model.prepare_training()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, image_size, image_size, generator=gen).to(device)
    blocks = torch.randint(0, num_classes, (1, 4, 4), generator=gen)  # 16 regions, at most 16 target masks
    labels = F.interpolate(blocks[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()
    emb = F.normalize(torch.randn(num_classes, model.clip.out_dim, generator=gen), dim=-1).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision(device):
            loss = model.training_losses(images, labels.to(device), emb).total
        loss.backward()
        optimizer.step()
    result = measure(step, device, warmup=warmup, repeats=repeats)
    model.eval()
    return result


def environment(device: torch.device) -> dict[str, Any]:
    """What a measurement depends on: device, precision, threads, versions."""
    env = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "precision": "bf16 autocast" if device.type == "cuda" else "float32",
           "cpu_peak_memory": "RSS growth (VmHWM after clear_refs)" if cpu_peak_supported() else "unavailable"}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        model_names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")]
        env["device_name"] = model_names[0] if model_names else platform.processor()
    return env


def as_dict(obj: Any) -> Any:
    """JSON-ready form of the records above (dataclasses become dicts, floats are rounded)."""
    if isinstance(obj, (Measurement, Breakdown)):
        return as_dict(asdict(obj))
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 3)
    return obj



# ---------------------------------------------------------------------------------------------------- the suite
@dataclass
class BenchPlan:
    """What one ``patseg bench`` run measures. ``full()`` is issue 6's list; ``quick()`` the tiny presets."""

    san: str = "san_vitb16"
    pat: str = "pat_vitb16_clip"
    size: tuple[int, int] = (640, 640)
    classes: int = 150  # vocabulary of the per-stage breakdown (ADE20K-150)
    sizes: tuple[tuple[int, int], ...] = ((320, 320), (640, 640), (960, 960), (640, 2560))
    vocabularies: tuple[int, ...] = (20, 150, 847, 5000)
    train_presets: tuple[tuple[str, int], ...] = (("san_tiny", 128), ("pat_tiny", 128),
                                                  ("san_vitb16", 640), ("pat_vitb16_clip", 640))
    memory_case: tuple[tuple[int, int], int] = ((640, 2560), 847)  # bounded post-processing target
    warmup: int = 1
    repeats: int = 3

    @classmethod
    def quick(cls) -> "BenchPlan":
        return cls(san="san_tiny", pat="pat_tiny", size=(128, 128), sizes=((128, 128), (256, 256), (128, 512)),
                   vocabularies=(20, 150, 847), train_presets=(("san_tiny", 128), ("pat_tiny", 128)),
                   memory_case=((128, 512), 847), warmup=2, repeats=5)


def _build(preset: str, device: torch.device, **overrides: Any) -> nn.Module:
    from patseg.build import build_model

    return build_model(preset, overrides=overrides).to(device).eval()


def run_suite(plan: BenchPlan, device: torch.device, sections: Sequence[str] = ("models", "sizes", "vocab", "train"),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan's sections and return the JSON-ready report (see ``docs/performance.md``)."""
    report: dict[str, Any] = {"environment": environment(device), "plan": as_dict(asdict(plan))}
    w, r = plan.warmup, plan.repeats
    models = {name: _build(name, device) for name in (plan.san, plan.pat)}
    if "models" in sections:
        report["clip_image_encoder"] = as_dict(clip_encoder(models[plan.san], plan.size, device, warmup=w, repeats=r))
        log(f"clip image encoder: {report['clip_image_encoder']['median_ms']:.0f} ms")
        report["models"] = {}
        for name, model in models.items():
            seg = make_segmenter(model, plan.classes, plan.size)
            report["models"][name] = as_dict(stage_breakdown(seg, random_image(*plan.size), device,
                                                             warmup=w, repeats=r))
            log(f"{name}: {report['models'][name]['end_to_end']['median_ms']:.0f} ms end to end")
    if "sizes" in sections:
        report["sizes"] = _predict_cases(models, [(n, hw, plan.classes) for hw in plan.sizes for n in models],
                                         device, w, r)
        hw, c = plan.memory_case
        report["memory_case"] = _predict_cases(models, [(plan.pat, hw, c)], device, w, r)[0]
        log("image sizes done")
    if "vocab" in sections:
        report["vocabulary"] = _predict_cases(models, [(n, plan.size, c) for c in plan.vocabularies for n in models],
                                              device, w, r)
        log("vocabularies done")
    if "train" in sections:
        del models
        report["train_step"] = []
        for name, size in plan.train_presets:
            # Random weights throughout: LPIPS gets lpips' random VGG trunk (same arithmetic as the real one).
            model = _build(name, device, **{"loss.lpips_random_trunk": True})
            m = train_step(model, size, device, warmup=w, repeats=r)
            report["train_step"].append({"preset": name, "size": size, **as_dict(m)})
            log(f"train step {name} @ {size}: {m.median_ms:.0f} ms")
    report["targets"] = check_targets(report, plan)
    return report


def _predict_cases(models: dict[str, nn.Module], cases: Sequence[tuple[str, tuple[int, int], int]],
                   device: torch.device, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """``predict`` end to end and the model forward alone for (preset, image size, classes) cases, side by side."""
    predict, forward = {}, {}
    for i, (name, hw, classes) in enumerate(cases):
        seg = make_segmenter(models[name], classes, hw)
        image = random_image(*hw)
        x, _ = seg._prepare(image)

        def run_predict(seg: Segmenter = seg, image: np.ndarray = image) -> None:
            with precision(device):
                seg.predict(image)

        def run_forward(seg: Segmenter = seg, x: torch.Tensor = x) -> None:
            with torch.inference_mode(), precision(device):
                seg.model(x, seg.class_embeddings)
        predict[i], forward[i] = run_predict, run_forward
    predicted = measure_all(predict, device, warmup=warmup, repeats=repeats)
    forwarded = measure_all(forward, device, warmup=0, repeats=repeats, memory=False, flops=False)
    return [{"preset": name, "size": list(hw), "classes": classes, "predict": as_dict(predicted[i]),
             "forward": as_dict(forwarded[i])} for i, (name, hw, classes) in enumerate(cases)]


# ---------------------------------------------------------------------------------------------------- targets
def _target(name: str, value: float, limit: float, note: str) -> dict[str, Any]:
    return {"target": name, "value": round(value, 3), "limit": limit, "passed": bool(value <= limit), "note": note}


def check_targets(report: dict[str, Any], plan: BenchPlan) -> list[dict[str, Any]]:
    """Issue 6's targets, each a ratio measured in this run (or the memory bound in MB)."""
    out = []
    models = report.get("models", {})
    if plan.pat in models and plan.san in models:
        out.append(_target(f"{plan.pat} end-to-end / sum of parts", models[plan.pat]["glue_ratio"], 1.15,
                           "parts replayed alone on recorded inputs"))
    # The latency ratio is taken from runs interleaved round by round when the sizes section has them.
    same = {c["preset"]: c["predict"] for c in report.get("sizes", []) if tuple(c["size"]) == tuple(plan.size)}
    if plan.pat in same and plan.san in same:
        pat_e2e, san_e2e, source = same[plan.pat], same[plan.san], "interleaved runs"
    elif plan.pat in models and plan.san in models:
        pat_e2e, san_e2e = models[plan.pat]["end_to_end"], models[plan.san]["end_to_end"]
        source = "separate breakdown runs"
    else:
        pat_e2e = san_e2e = None
    if pat_e2e is not None:
        latency = pat_e2e["median_ms"] / san_e2e["median_ms"]
        flops = pat_e2e["gflops"] / san_e2e["gflops"]
        out.append(_target(f"{plan.pat} / {plan.san} latency over FLOPs ratio", latency / flops, 1.0,
                           f"latency ratio {latency:.2f}, FLOPs ratio {flops:.2f} ({source})"))
    by = {(v["preset"], v["classes"]): v for v in report.get("vocabulary", [])}
    for name in (plan.san, plan.pat):
        if (name, 20) in by and (name, 847) in by:
            big, small = by[(name, 847)], by[(name, 20)]
            for what in ("forward", "predict"):
                ratio = big[what]["median_ms"] / small[what]["median_ms"]
                note = ("model forward, cached text embeddings" if what == "forward" else
                        f"with post-processing; FLOPs ratio {big['predict']['gflops'] / small['predict']['gflops']:.2f}")
                out.append(_target(f"{name} {what} 847 / 20 classes", ratio, 1.10, note))
    if "memory_case" in report:
        case = report["memory_case"]
        out.append(_target(f"{case['preset']} predict {case['size'][0]}x{case['size'][1]}, {case['classes']} classes"
                           f" peak MB", case["predict"]["peak_mb"], 4096.0, "RSS growth on CPU, allocator peak on GPU"))
    return out
