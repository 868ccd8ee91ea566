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
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch
import torch.nn.functional as F

from patseg.bench.measure import Measurement, cpu_peak_supported, measure, measure_all, precision, synchronize
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
    model: SAN, image_hw: tuple[int, int], device: torch.device, *, warmup: int, repeats: int
) -> Measurement:
    """The bare frozen CLIP image encoder at SAN's CLIP input size (the image scaled by ``resize_ratio``)."""
    h, w = (round(s * model.resize_ratio) for s in image_hw)
    x = torch.randn(1, 3, h, w, device=device)

    def run() -> None:
        with torch.inference_mode(), precision(device):
            model.clip.encode_image(x)

    return measure(run, device, warmup=warmup, repeats=repeats)


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
        with precision(device):
            loss = model.training_losses(images, labels.to(device), emb).total
        loss.backward()
        optimizer.step()

    result = measure(step, device, warmup=warmup, repeats=repeats)
    model.eval()
    return result


def compiled_predict(
    model: SAN, name: str, plan: BenchPlan, device: torch.device, *, warmup: int, repeats: int
) -> dict[str, Any]:
    """``predict`` at ``plan.size`` with the model eager and under ``torch.compile``, side by side. The first compiled
    call (tracing and code generation) is timed apart; labels are compared, as fused kernels round differently."""
    eager = make_segmenter(model, plan.classes, plan.size)
    compiled = copy.copy(eager)
    compiled.model = cast(SAN, torch.compile(model))  # the compiled wrapper forwards attribute reads to ``model``
    image = random_image(*plan.size)
    with precision(device):
        start = time.perf_counter()
        labels = compiled.predict(image)
        synchronize(device)
        first_s = time.perf_counter() - start
        agree = float((labels == eager.predict(image)).mean())
    fns = {"eager": lambda: eager.predict(image), "compiled": lambda: compiled.predict(image)}
    with precision(device):
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


def environment(device: torch.device) -> dict[str, Any]:
    """What a measurement depends on: device, precision, threads, versions."""
    env = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "cpu_peak_memory": "RSS growth (VmHWM after clear_refs)" if cpu_peak_supported() else "unavailable",
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        model_names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
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
    """What one ``patseg bench`` run measures. The defaults are the full run (ViT-B/16 presets at SAN's 640x640,
    ADE20K-150's vocabulary, the sizes and vocabularies of ``docs/performance.md``); ``quick()`` the tiny presets."""

    san: str = "san_vitb16"
    pat: str = "pat_vitb16_clip"
    size: tuple[int, int] = (640, 640)
    classes: int = 150  # vocabulary of the per-stage breakdown (ADE20K-150)
    sizes: tuple[tuple[int, int], ...] = ((320, 320), (640, 640), (960, 960), (640, 2560))
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
        )


def _build(preset: str, device: torch.device, overrides: Mapping[str, Any]) -> SAN:
    from patseg.build import build_model
    from patseg.config import keys_for_preset

    return build_model(preset, overrides=keys_for_preset(preset, dict(overrides))).to(device).eval()


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
    report: dict[str, Any] = {"environment": environment(device), "plan": as_dict(asdict(plan))}
    w, r = plan.warmup, plan.repeats
    overrides = dict(overrides or {})  # model config keys (``--set``) for every model; pat.* for PAT only
    models = {name: _build(name, device, overrides) for name in (plan.san, plan.pat)}
    if "models" in sections:
        report["clip_image_encoder"] = as_dict(clip_encoder(models[plan.san], plan.size, device, warmup=w, repeats=r))
        log(f"clip image encoder: {report['clip_image_encoder']['median_ms']:.0f} ms")
        report["models"] = {}
        for name, model in models.items():
            seg = make_segmenter(model, plan.classes, plan.size)
            report["models"][name] = as_dict(
                stage_breakdown(seg, random_image(*plan.size), device, warmup=w, repeats=r)
            )
            log(f"{name}: {report['models'][name]['end_to_end']['median_ms']:.0f} ms end to end")
    if "sizes" in sections:
        report["sizes"] = _predict_cases(
            models, [(n, hw, plan.classes) for hw in plan.sizes for n in models], device, w, r
        )
        hw, c = plan.memory_case
        report["memory_case"] = _predict_cases(models, [(plan.pat, hw, c)], device, w, r)[0]
        log("image sizes done")
    if "vocab" in sections:
        report["vocabulary"] = _predict_cases(
            models, [(n, plan.size, c) for c in plan.vocabularies for n in models], device, w, r
        )
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
    warmup: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """``predict`` end to end and the model forward alone for (preset, image size, classes) cases, side by side."""
    predict: dict[int, Callable[[], None]] = {}
    forward: dict[int, Callable[[], None]] = {}
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
    return [
        {
            "preset": name,
            "size": list(hw),
            "classes": classes,
            "predict": as_dict(predicted[i]),
            "forward": as_dict(forwarded[i]),
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
        with torch.inference_mode(), precision(device):
            shapes[name] = tuple(model(x, seg.class_embeddings).main.masks.shape[1:])
    return postprocess_cases(segs, shapes, plan.size, plan.vocabularies, device, warmup=warmup, repeats=repeats)


# ---------------------------------------------------------------------------------------------------- targets
def _target(name: str, value: float, limit: float, note: str) -> dict[str, Any]:
    return {"target": name, "value": round(value, 3), "limit": limit, "passed": bool(value <= limit), "note": note}


def check_targets(report: dict[str, Any], plan: BenchPlan) -> list[dict[str, Any]]:
    """The performance targets, each a ratio measured in this run (or the memory bound in MB): glue at most 15% of
    the parts, PAT/SAN latency no worse than their FLOPs ratio, 847 classes at most 10% slower than 20, and the
    bounded post-processing's peak memory under 4 GB (see ``docs/performance.md``)."""
    out = []
    models = report.get("models", {})
    if plan.pat in models and plan.san in models:
        out.append(
            _target(
                f"{plan.pat} end-to-end / sum of parts",
                models[plan.pat]["glue_ratio"],
                1.15,
                "parts replayed alone on recorded inputs",
            )
        )
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
        out.append(
            _target(
                f"{plan.pat} / {plan.san} latency over FLOPs ratio",
                latency / flops,
                1.0,
                f"latency ratio {latency:.2f}, FLOPs ratio {flops:.2f} ({source})",
            )
        )
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
