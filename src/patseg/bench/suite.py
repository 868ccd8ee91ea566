"""The ``patseg bench`` suite: what is measured (:class:`BenchPlan`), on which inputs, and the targets it checks.

Models have random weights. Class embeddings are random unit vectors primed into the text encoder's cache
(:func:`cached_vocabulary`): the text tower is excluded by design, as ``Segmenter`` encodes a vocabulary once and
reuses it for every image. The report layout is described in ``docs/performance.md``.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional, cast

import numpy as np
import torch
import torch.nn.functional as F

from patseg.bench.measure import (
    Measurement,
    cpu_name,
    cpu_peak_supported,
    matmul_probe,
    measure,
    measure_all,
    measure_with_probe,
    precision,
    synchronize,
)
from patseg.bench.postprocess import postprocess_cases
from patseg.bench.stages import Breakdown, stage_breakdown
from patseg.models.san.model import SAN
from patseg.predictor import Segmenter


# ---------------------------------------------------------------------------------------------------- set-up
def cached_vocabulary(model: SAN, num_classes: int, *, seed: int = 0) -> list[str]:
    """Names ``class 0..C-1`` whose embeddings are random unit vectors primed into the text encoder's memory cache,
    so a Segmenter built on them skips the text tower (its cost is excluded by design)."""
    names = [f"class {i}" for i in range(num_classes)]
    gen = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(num_classes, model.clip.out_dim, generator=gen), dim=-1)
    model.text.prime(names, model.templates, emb)
    return names


def random_image(h: int, w: int, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def make_segmenter(model: SAN, num_classes: int, image_hw: tuple[int, int]) -> Segmenter:
    """A Segmenter that keeps ``image_hw`` as it is (short side = the image's, long side up to 4x)."""
    short = min(image_hw)
    return Segmenter(model, cached_vocabulary(model, num_classes), short_side=short, max_long_side=4 * short)


def clip_encoder(
    model: SAN,
    image_hw: tuple[int, int],
    device: torch.device,
    probe: tuple[Callable[[], Any], float],
    *,
    warmup: int,
    repeats: int,
    mode: str = "fp32",
) -> tuple[Measurement, Measurement]:
    """The bare frozen CLIP image encoder at SAN's CLIP input size (the image scaled by ``resize_ratio``), and the
    matrix-product probe timed in the same rounds."""
    h, w = (round(s * model.resize_ratio) for s in image_hw)
    x = torch.randn(1, 3, h, w, device=device)

    def run() -> None:
        with torch.inference_mode(), precision(device, mode):
            model.clip.encode_image(x)

    parts, probe_m = measure_with_probe({"clip": run}, device, probe, warmup=warmup, repeats=repeats)
    return parts["clip"], probe_m


def train_step(
    model: SAN, image_size: int, device: torch.device, *, num_classes: int = 150, warmup: int, repeats: int
) -> Measurement:
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
        with precision(device, TRAIN_PRECISION.get(device.type, "fp32")):
            loss = model.training_losses(images, labels.to(device), emb).total
        loss.backward()
        optimizer.step()

    result = measure(step, device, warmup=warmup, repeats=repeats)
    model.eval()
    return result


TRAIN_PRECISION = {"cuda": "bf16"}  # the training step runs as training does: bf16 autocast on GPU, else fp32


def compiled_predict(
    model: SAN, name: str, plan: BenchPlan, device: torch.device, *, warmup: int, repeats: int
) -> dict[str, Any]:
    """``predict`` at ``plan.size`` with the model eager and under ``torch.compile``, side by side. The first compiled
    call (tracing and code generation) is timed apart; labels are compared, as fused kernels round differently."""
    eager = make_segmenter(model, plan.classes, plan.size)
    compiled = copy.copy(eager)
    compiled.model = cast(SAN, torch.compile(model))  # the compiled wrapper forwards attribute reads to ``model``
    image = random_image(*plan.size)
    with precision(device, plan.precision):
        start = time.perf_counter()
        labels = compiled.predict(image)
        synchronize(device)
        first_s = time.perf_counter() - start
        agree = float((labels == eager.predict(image)).mean())
    fns = {"eager": lambda: eager.predict(image), "compiled": lambda: compiled.predict(image)}
    with precision(device, plan.precision):
        timed = measure_all(fns, device, warmup=warmup, repeats=repeats, memory=False, flops=False)
    return {
        "preset": name,
        "size": list(plan.size),
        "classes": plan.classes,
        "compile_s": first_s,
        "eager_ms": timed["eager"].median_ms,
        "compiled_ms": timed["compiled"].median_ms,
        "labels_agree": agree,
    }


def environment(device: torch.device, mode: str = "fp32") -> dict[str, Any]:
    """What a measurement depends on: device, precision, threads, versions."""
    env = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "precision": mode,
        "cpu_peak_memory": "RSS growth (VmHWM after clear_refs)" if cpu_peak_supported() else "unavailable",
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = cpu_name()
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
    """What one ``patseg bench`` run measures. The defaults are the full run (ViT-B/16 presets at SAN's 640x640,
    ADE20K-150's vocabulary, the sizes and vocabularies of ``docs/performance.md``); ``quick()`` the tiny presets."""

    san: str = "san_vitb16"
    pat: str = "pat_vitb16_clip"
    size: tuple[int, int] = (640, 640)
    classes: int = 150  # vocabulary of the per-stage breakdown (ADE20K-150)
    sizes: tuple[tuple[int, int], ...] = ((320, 320), (640, 640), (1280, 1280), (640, 2560))
    vocabularies: tuple[int, ...] = (20, 150, 847, 5000)
    train_presets: tuple[tuple[str, int], ...] = (
        ("san_tiny", 128),
        ("pat_tiny", 128),
        ("san_vitb16", 640),
        ("pat_vitb16_clip", 640),
    )
    memory_case: tuple[tuple[int, int], int] = ((640, 2560), 847)  # bounded post-processing target
    warmup: int = 1
    repeats: int = 3
    precision: str = "fp32"  # inference precision (patseg.precision); the training step runs as training does
    probe_size: int = 2048  # side of the matrix-product probe

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(
            san="san_tiny",
            pat="pat_tiny",
            size=(128, 128),
            sizes=((128, 128), (256, 256), (128, 512)),
            vocabularies=(20, 150, 847),
            train_presets=(("san_tiny", 128), ("pat_tiny", 128)),
            memory_case=((128, 512), 847),
            warmup=2,
            repeats=5,
            probe_size=512,
        )


def _build(preset: str, device: torch.device, overrides: Mapping[str, Any], mode: str = "fp32") -> SAN:
    """A random-weight model in inference precision ``mode`` (int8: Linear layers dynamically quantized)."""
    from patseg.build import build_model
    from patseg.config import keys_for_preset
    from patseg.precision import prepare_model

    model = build_model(preset, overrides=keys_for_preset(preset, dict(overrides))).to(device).eval()
    return prepare_model(model, mode)


def _random_lpips_trunk(model: SAN) -> None:
    """Random weights throughout: PAT's LPIPS gets lpips' random VGG trunk (the real one's arithmetic, no file)."""
    reconstruction = getattr(getattr(model, "criterion", None), "reconstruction", None)
    if reconstruction is not None:
        reconstruction.random_trunk = True


def run_suite(
    plan: BenchPlan,
    device: torch.device,
    sections: Sequence[str] = ("models", "sizes", "vocab", "train"),
    log: Callable[[str], None] = print,
    overrides: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Run the plan's sections and return the JSON-ready report (see ``docs/performance.md``)."""
    from patseg.precision import check_precision

    check_precision(plan.precision, device)
    report: dict[str, Any] = {"environment": environment(device, plan.precision), "plan": as_dict(asdict(plan))}
    w, r, mode = plan.warmup, plan.repeats, plan.precision
    overrides = dict(overrides or {})  # model config keys (``--set``) for every model; pat.* for PAT only
    models = {name: _build(name, device, overrides, mode) for name in (plan.san, plan.pat)}
    probe = matmul_probe(device, mode, plan.probe_size)
    clip, probe_m = clip_encoder(models[plan.san], plan.size, device, probe, warmup=w, repeats=r, mode=mode)
    report["probe"] = as_dict(probe_m)
    log(f"matrix-product probe ({plan.probe_size}^3, {mode}): {probe_m.gflops_per_s:.0f} GFLOP/s")
    if "models" in sections:
        report["clip_image_encoder"] = as_dict(clip)
        log(f"clip image encoder: {clip.median_ms:.0f} ms")
        report["models"] = {}
        for name, model in models.items():
            seg = make_segmenter(model, plan.classes, plan.size)
            breakdown = stage_breakdown(seg, random_image(*plan.size), device, probe, warmup=w, repeats=r, mode=mode)
            report["models"][name] = as_dict(breakdown)
            log(f"{name}: {breakdown.end_to_end.median_ms:.0f} ms end to end")
    if "sizes" in sections:
        cases = [(n, hw, plan.classes) for hw in plan.sizes for n in models]
        report["sizes"] = _predict_cases(models, cases, device, probe, w, r, mode)
        hw, c = plan.memory_case
        report["memory_case"] = _predict_cases(models, [(plan.pat, hw, c)], device, probe, w, r, mode)[0]
        log("image sizes done")
    if "vocab" in sections:
        cases = [(n, plan.size, c) for c in plan.vocabularies for n in models]
        report["vocabulary"] = _predict_cases(models, cases, device, probe, w, r, mode)
        report["postprocess_regions"] = _region_cases(models, plan, device, w, r)
        log("vocabularies done")
    if "compile" in sections:
        report["compile"] = [compiled_predict(models[n], n, plan, device, warmup=w, repeats=r) for n in models]
        log("torch.compile done")
    if "train" in sections:
        del models
        report["train_step"] = []
        for name, size in plan.train_presets:
            model = _build(name, device, overrides)
            _random_lpips_trunk(model)
            m = train_step(model, size, device, warmup=w, repeats=r)
            report["train_step"].append({"preset": name, "size": size, **as_dict(m)})
            log(f"train step {name} @ {size}: {m.median_ms:.0f} ms")
    report["targets"] = check_targets(report, plan)
    return report


def _predict_cases(
    models: dict[str, SAN],
    cases: Sequence[tuple[str, tuple[int, int], int]],
    device: torch.device,
    probe: tuple[Callable[[], Any], float],
    warmup: int,
    repeats: int,
    mode: str,
) -> list[dict[str, Any]]:
    """``predict`` end to end and the model forward alone for (preset, image size, classes) cases, side by side,
    each rated against the matrix-product probe."""
    predict: dict[str, Callable[[], None]] = {}
    forward: dict[str, Callable[[], None]] = {}
    for i, (name, hw, classes) in enumerate(cases):
        seg = make_segmenter(models[name], classes, hw)
        image = random_image(*hw)
        x, _ = seg._prepare(image)

        def run_predict(seg: Segmenter = seg, image: np.ndarray = image) -> None:
            with precision(device, mode):
                seg.predict(image)

        def run_forward(seg: Segmenter = seg, x: torch.Tensor = x) -> None:
            with torch.inference_mode(), precision(device, mode):
                seg.model(x, seg.class_embeddings)

        predict[str(i)], forward[str(i)] = run_predict, run_forward
    predicted, _ = measure_with_probe(predict, device, probe, warmup=warmup, repeats=repeats)
    forwarded, _ = measure_with_probe(forward, device, probe, warmup=0, repeats=repeats, memory=False)
    return [
        {
            "preset": name,
            "size": list(hw),
            "classes": classes,
            "predict": as_dict(predicted[str(i)]),
            "forward": as_dict(forwarded[str(i)]),
        }
        for i, (name, hw, classes) in enumerate(cases)
    ]


def _region_cases(
    models: dict[str, SAN], plan: BenchPlan, device: torch.device, warmup: int, repeats: int
) -> list[dict[str, Any]]:
    """Post-processing of region-like predictions on each model's own (Q, h, w) mask grid at ``plan.size``."""
    segs, shapes = {}, {}
    for name, model in models.items():
        segs[name] = seg = make_segmenter(model, plan.classes, plan.size)
        x, _ = seg._prepare(random_image(*plan.size))
        with torch.inference_mode(), precision(device, plan.precision):
            shapes[name] = tuple(model(x, seg.class_embeddings).main.masks.shape[1:])
    return postprocess_cases(segs, shapes, plan.size, plan.vocabularies, device, warmup=warmup, repeats=repeats)


# ---------------------------------------------------------------------------------------------------- targets
PROBE_FRACTION = 0.85  # SAN's predict and scores: achieved GFLOP/s over the matrix-product probe's, at least
KERNEL_GAP = 1.15  # SAN's predict time over its kernel bound (its dense ops replayed alone), at most
PAT_OVER_SAN = 1.6  # PAT's predict time over SAN's, at most
AREA_GROWTH = 1.15  # time per pixel of PAT's own parts (PAT - SAN) at a larger image over 640x640, at most


def _target(name: str, value: float, limit: float, note: str, *, at_least: bool = False) -> dict[str, Any]:
    passed = value >= limit if at_least else value <= limit
    return {
        "target": name,
        "value": round(value, 3),
        "limit": limit,
        "kind": "at least" if at_least else "at most",
        "passed": bool(passed),
        "note": note,
    }


def _kernel_targets(model: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Informational, next to the probe target: whether predict's own op shapes, replayed alone, reach the probe
    fraction at all, and how much of predict's time is spent outside its dense kernels."""
    out = []
    bound = model.get("kernel_bound")
    if bound and bound.get("of_probe") is not None:
        note = f"informational: predict's dense ops replayed alone, {bound['gflops_per_s']:.0f} GFLOP/s"
        label = f"{name} predict kernel bound / matmul probe"
        out.append(_target(label, bound["of_probe"], PROBE_FRACTION, note, at_least=True))
    if model.get("over_kernel_bound") is not None:
        note = "time outside dense kernels: memory-bound ops, glue, post-processing"
        out.append(_target(f"{name} predict / kernel bound", model["over_kernel_bound"], KERNEL_GAP, note))
    return out


def _probe_targets(models: dict[str, Any], plan: BenchPlan) -> list[dict[str, Any]]:
    """SAN's predict and scores against the matrix-product probe (with SAN's kernel bound next to predict's), and
    PAT's glue."""
    out = []
    if plan.san in models:
        for what, call in (("end_to_end", "predict"), ("scores", "scores")):
            m = models[plan.san][what]
            note = f"{m['gflops_per_s']:.0f} GFLOP/s achieved, probe timed in the same rounds"
            out.append(_target(f"{plan.san} {call} / matmul probe", m["of_probe"], PROBE_FRACTION, note, at_least=True))
            if call == "predict":
                out += _kernel_targets(models[plan.san], plan.san)
    if plan.pat in models:
        glue = models[plan.pat]["glue_ratio"]
        out.append(_target(f"{plan.pat} end-to-end / sum of parts", glue, 1.15, "parts replayed alone"))
    return out


def _latency_targets(report: dict[str, Any], plan: BenchPlan) -> list[dict[str, Any]]:
    """PAT / SAN time at the plan's size, and how PAT's own cost grows with the image area."""
    out: list[dict[str, Any]] = []
    models = report.get("models", {})
    # The latency ratio is taken from runs interleaved round by round when the sizes section has them.
    cases = {(c["preset"], tuple(c["size"])): c["predict"] for c in report.get("sizes", [])}
    size = tuple(plan.size)
    if (plan.pat, size) in cases and (plan.san, size) in cases:
        pat_e2e, san_e2e, source = cases[(plan.pat, size)], cases[(plan.san, size)], "interleaved runs"
    elif plan.pat in models and plan.san in models:
        pat_e2e, san_e2e = models[plan.pat]["end_to_end"], models[plan.san]["end_to_end"]
        source = "separate breakdown runs"
    else:
        return out
    latency = pat_e2e["median_ms"] / san_e2e["median_ms"]
    flops = pat_e2e["gflops"] / san_e2e["gflops"]
    note = f"FLOPs ratio {flops:.2f} ({source})"
    out.append(_target(f"{plan.pat} / {plan.san} predict time", latency, PAT_OVER_SAN, note))
    base_area = size[0] * size[1]
    for hw in plan.sizes:
        area = hw[0] * hw[1]
        if area <= base_area or (plan.pat, tuple(hw)) not in cases or (plan.san, tuple(hw)) not in cases:
            continue

        def own(preset_cases: dict[str, Any], key: str) -> float:  # PAT's parts alone: PAT - SAN
            return preset_cases[plan.pat][key] - preset_cases[plan.san][key]

        big = {n: cases[(n, tuple(hw))] for n in (plan.pat, plan.san)}
        small = {n: cases[(n, size)] for n in (plan.pat, plan.san)}
        scale = base_area / area
        growth = own(big, "median_ms") / own(small, "median_ms") * scale
        flop_growth = own(big, "gflops") / own(small, "gflops") * scale
        whole = big[plan.pat]["median_ms"] / small[plan.pat]["median_ms"] * scale
        note = f"FLOPs per pixel {flop_growth:.2f}; all of PAT {whole:.2f} (CLIP and side ViT attention are quadratic)"
        name = f"{plan.pat} - {plan.san} time per pixel {hw[0]}x{hw[1]} / {size[0]}x{size[1]}"
        out.append(_target(name, growth, AREA_GROWTH, note))
    return out


def check_targets(report: dict[str, Any], plan: BenchPlan) -> list[dict[str, Any]]:
    """The performance targets, each a ratio measured in this run (or the memory bound in MB): SAN's predict and
    scores at 85% of the matrix-product probe (with, for predict, its kernel bound's fraction of the probe and
    predict's time over the bound, at most 1.15), glue at most 15% of the parts, PAT at most 1.6x SAN's time, PAT's own
    cost linear in the image area, 847 classes at most 10% slower than 20, and the bounded post-processing's peak
    memory under 4 GB (see ``docs/performance.md``)."""
    out = _probe_targets(report.get("models", {}), plan) + _latency_targets(report, plan)
    by = {(v["preset"], v["classes"]): v for v in report.get("vocabulary", [])}
    for name in (plan.san, plan.pat):
        if (name, 20) in by and (name, 847) in by:
            big, small = by[(name, 847)], by[(name, 20)]
            for what in ("forward", "predict"):
                ratio = big[what]["median_ms"] / small[what]["median_ms"]
                flop_ratio = big["predict"]["gflops"] / small["predict"]["gflops"]
                note = (
                    "model forward, cached text embeddings"
                    if what == "forward"
                    else f"with post-processing; FLOPs ratio {flop_ratio:.2f}"
                )
                out.append(_target(f"{name} {what} 847 / 20 classes", ratio, 1.10, note))
    regions = {(c["preset"], c["classes"]): c for c in report.get("postprocess_regions", [])}
    for name in (plan.san, plan.pat):
        if (name, 20) in by and (name, 20) in regions and (name, 847) in regions:
            # What predict would take with a trained model's masks: the same forward plus region-like post-processing.
            forward = by[(name, 20)]["forward"]["median_ms"]
            ratio = (forward + regions[(name, 847)]["bounded_ms"]) / (forward + regions[(name, 20)]["bounded_ms"])
            out.append(
                _target(
                    f"{name} predict 847 / 20 classes, region-like masks",
                    ratio,
                    1.10,
                    "forward + post-processing of region-like predictions",
                )
            )
    if "memory_case" in report:
        case = report["memory_case"]
        out.append(
            _target(
                f"{case['preset']} predict {case['size'][0]}x{case['size'][1]}, {case['classes']} classes peak MB",
                case["predict"]["peak_mb"],
                4096.0,
                "RSS growth on CPU, allocator peak on GPU",
            )
        )
    return out
