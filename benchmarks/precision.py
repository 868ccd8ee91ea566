"""Speed and agreement of ``--precision`` (fp32, bf16, fp16, int8) on this machine's CPU.

    python benchmarks/precision.py --threads 2 --measure-refused
    python benchmarks/precision.py --scenes 2 --images 1 --presets san_vitb16 --out /tmp/p   # quicker

For every mode :func:`patseg.precision.check_precision` accepts on the CPU, and on two kinds of model:

- ``tiny (trained)``: the demo's shipped SAN-tiny and PAT-tiny on OVSS-mini's evaluation scenes (``VAL_SEED``, the
  scenes ``patseg mini`` evaluates on) at their training size, with the world's concept names as the vocabulary,
  as ``patseg.mini.evaluate`` builds its Segmenter;
- ``full size (random)``: the ``san_vitb16`` and ``pat_vitb16_clip`` presets with random weights on OVSS-mini
  scenes rendered at SIZE x SIZE, with a vocabulary of random class embeddings primed into the text cache
  (``patseg.bench.suite.cached_vocabulary``, 150 classes as ADE20K-150).

it reports milliseconds per image (``Segmenter.infer`` + ``labels``, i.e. ``predict``, after one warm-up call per
mode): the best and the median of the timed calls, the speed-up over fp32 (of the best times: on a machine shared
with other jobs the fastest call is the least disturbed one), the same for the forward alone (``infer``; the
float32 post-processing is the same in every mode), the label agreement with fp32 (percent of pixels with the
same label, over all images) and the largest and mean absolute difference of the per-class scores
(``Segmenter.scores``) against fp32. The modes run interleaved, image by image, so that a change of machine load
hits them alike; the load average before and after each model is recorded. Building each Segmenter (text
embeddings, int8's quantized copy) is timed apart as ``setup_s``.

A mode the CPU cannot run natively is listed as refused, with the reason. ``--measure-refused`` times such modes
anyway (the capability check is bypassed for this script only), to show what the refusal avoids.

Results go to ``OUT.json`` (every number, the machine, the command) and ``OUT.md``, written atomically; an existing
result is not replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from provenance import git_commit, refuses_to_replace, write_results

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "precision"
FULL_PRESETS = ("san_vitb16", "pat_vitb16_clip")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (2)")
    p.add_argument("--scenes", type=int, default=8, help="OVSS-mini evaluation scenes for the tiny models (8)")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the scenes, tiny models (3)")
    p.add_argument("--images", type=int, default=2, help="images for the full-size presets (2)")
    p.add_argument("--full-rounds", type=int, default=4, help="timed passes over them (4)")
    p.add_argument("--size", type=int, default=640, help="side of the full-size presets' square images (640)")
    p.add_argument("--classes", type=int, default=150, help="vocabulary of the full-size presets (150)")
    p.add_argument("--presets", nargs="*", default=list(FULL_PRESETS), help="full-size presets (both ViT-B/16)")
    p.add_argument("--no-tiny", action="store_true", help="skip the shipped tiny models")
    p.add_argument("--measure-refused", action="store_true", help="time the modes this CPU refuses, for the record")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result")
    return p


# ---------------------------------------------------------------------------------------------------- machine
def machine_info(threads: int) -> dict[str, Any]:
    import torch

    from patseg.bench.measure import cpu_name

    caps = torch.cpu.get_capabilities()
    flags = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "amx_int8", "avx512_vnni")
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": {f: bool(caps.get(f)) for f in flags},
        "quantized_engine": torch.backends.quantized.engine,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------------- modes
def mode_status(measure_refused: bool) -> dict[str, dict[str, Any]]:
    """{mode: {"status": "supported" | "refused" | "forced", "reason": ...}} on this CPU."""
    import torch

    from patseg.errors import UsageError
    from patseg.precision import PRECISIONS, check_precision

    status: dict[str, dict[str, Any]] = {}
    for mode in PRECISIONS:
        try:
            check_precision(mode, torch.device("cpu"))
            status[mode] = {"status": "supported"}
        except UsageError as exc:
            status[mode] = {"status": "forced" if measure_refused else "refused", "reason": str(exc)}
    return status


def make_segmenter(model: Any, names: Sequence[str], mode: str, forced: bool, **kwargs: Any) -> Any:
    """A Segmenter in ``mode``; a ``forced`` mode gets past the CPU check (for this script's record only)."""
    import patseg.precision as precision
    from patseg.predictor import Segmenter

    if not forced:
        return Segmenter(model, names, precision=mode, **kwargs)
    keep = precision._cpu_capabilities
    precision._cpu_capabilities = lambda: {"avx512_bf16": True, "amx_bf16": True, "amx_fp16": True}
    try:
        return Segmenter(model, names, precision=mode, **kwargs)
    finally:
        precision._cpu_capabilities = keep


def scores_of(segmenter: Any, inference: Any) -> Any:
    """(C, H, W) float32 scores of one :meth:`Segmenter.infer` result, as :meth:`Segmenter.scores` computes them
    (without a second forward)."""
    import torch

    pred, padded, valid, size = inference.output.main, inference.padded, inference.valid, inference.size
    with torch.inference_mode():
        return torch.cat([part for _, part in segmenter._class_scores(pred, padded, valid, size)]).cpu().numpy()


def compare_modes(
    model: Any,
    names: Sequence[str],
    images: Sequence[Any],
    modes: dict[str, dict[str, Any]],
    *,
    rounds: int,
    log: Callable[[str], None],
    **segmenter_kwargs: Any,
) -> dict[str, Any]:
    """Every runnable mode on ``images``: timings, and labels and scores against fp32's."""
    import numpy as np

    runnable = [m for m, s in modes.items() if s["status"] != "refused"]
    assert runnable[0] == "fp32"
    segmenters, setup = {}, {}
    for mode in runnable:
        start = time.perf_counter()
        segmenters[mode] = make_segmenter(model, names, mode, modes[mode]["status"] == "forced", **segmenter_kwargs)
        setup[mode] = time.perf_counter() - start
    times: dict[str, list[float]] = {m: [] for m in runnable}
    forward: dict[str, list[float]] = {m: [] for m in runnable}  # the infer part alone: what the mode changes
    labels: dict[str, list[Any]] = {m: [] for m in runnable}
    scores: dict[str, list[Any]] = {m: [] for m in runnable}
    for mode in runnable:  # warm-up: first-call costs (kernels, quantized weight packing) stay out of the timings
        segmenters[mode].labels(segmenters[mode].infer(images[0]))
    load_before = os.getloadavg()
    for r in range(rounds):
        for image in images:  # mode by mode on each image: a burst of load from other jobs hits every mode alike
            for mode in runnable:
                seg = segmenters[mode]
                start = time.perf_counter()
                inference = seg.infer(image)
                middle = time.perf_counter()
                label = seg.labels(inference)
                times[mode].append(time.perf_counter() - start)
                forward[mode].append(middle - start)
                if r == 0:
                    labels[mode].append(label)
                    scores[mode].append(scores_of(seg, inference))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{m} {1e3 * min(times[m]):.0f} ms" for m in runnable))
    result: dict[str, Any] = {
        "images": len(images),
        "image_size": list(images[0].shape[:2]),
        "classes": len(names),
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
        "modes": {},
    }
    fp32_ms, fp32_forward_ms = 1e3 * min(times["fp32"]), 1e3 * min(forward["fp32"])
    for mode in modes:
        if mode not in runnable:
            result["modes"][mode] = dict(modes[mode])
            continue
        ms = 1e3 * min(times[mode])
        same = sum(int((a == b).sum()) for a, b in zip(labels[mode], labels["fp32"]))
        total = sum(a.size for a in labels["fp32"])
        diffs = [np.abs(a - b) for a, b in zip(scores[mode], scores["fp32"])]
        result["modes"][mode] = {
            **modes[mode],
            "ms_per_image": ms,
            "ms_median": 1e3 * statistics.median(times[mode]),
            "ms_all": [1e3 * t for t in times[mode]],
            "speedup": fp32_ms / ms,
            "forward_ms": 1e3 * min(forward[mode]),
            "forward_speedup": fp32_forward_ms / (1e3 * min(forward[mode])),
            "setup_s": setup[mode],
            "label_agreement_pct": 100.0 * same / total,
            "max_abs_score_diff": float(max(d.max() for d in diffs)),
            "mean_abs_score_diff": float(np.mean([d.mean() for d in diffs])),
        }
    return result


# ---------------------------------------------------------------------------------------------------- inputs
def tiny_runs(args: argparse.Namespace, modes: dict[str, dict[str, Any]], log: Callable[[str], None]) -> dict:
    import numpy as np

    from patseg.demo.shipped import load_shipped
    from patseg.mini.benchmark import FULL
    from patseg.mini.evaluate import VAL_SEED
    from patseg.mini.scenes import SyntheticSegmentation
    from patseg.mini.world import WorldConfig

    world, size = WorldConfig(), FULL.image_size
    names = list(world.concept_names)
    scenes = SyntheticSegmentation(world, "val", args.scenes, size, VAL_SEED)
    images = [np.ascontiguousarray(scenes[i]["image"].permute(1, 2, 0).numpy()) for i in range(len(scenes))]
    runs = {}
    for name, model in load_shipped("cpu").items():
        log(f"{name} (trained, {len(images)} OVSS-mini evaluation scenes of {size} px, {len(names)} concepts)")
        runs[name] = compare_modes(
            model, names, images, modes, rounds=args.rounds, log=log, short_side=size, max_long_side=4 * size
        )
    return runs


def full_runs(args: argparse.Namespace, modes: dict[str, dict[str, Any]], log: Callable[[str], None]) -> dict:
    import torch

    from patseg.bench.suite import cached_vocabulary
    from patseg.build import build_model
    from patseg.mini.scenes import render_scene, scene_rng
    from patseg.mini.world import WorldConfig

    world = WorldConfig()
    images = [render_scene(world, scene_rng(0, "precision", i), args.size).image for i in range(args.images)]
    runs = {}
    for preset in args.presets:
        torch.manual_seed(0)
        model = build_model(preset).eval()
        names = cached_vocabulary(model, args.classes)
        log(f"{preset} (random weights, {len(images)} scenes of {args.size} x {args.size}, {len(names)} classes)")
        runs[preset] = compare_modes(
            model,
            names,
            images,
            modes,
            rounds=args.full_rounds,
            log=log,
            short_side=args.size,
            max_long_side=4 * args.size,
        )
        del model
    return runs


# ---------------------------------------------------------------------------------------------------- report
def _row(name: str, mode: str, rec: dict[str, Any]) -> str:
    if rec["status"] == "refused":
        return f"| {name} | {mode} | refused | | | | | | | | |"
    state = " (forced)" if rec["status"] == "forced" else ""
    return (
        f"| {name} | {mode}{state} | {rec['ms_per_image']:,.0f} | {rec['ms_median']:,.0f} | {rec['speedup']:.2f}x | "
        f"{rec['forward_ms']:,.0f} | {rec['forward_speedup']:.2f}x | "
        f"{rec['label_agreement_pct']:.2f} | {rec['max_abs_score_diff']:.3g} | {rec['mean_abs_score_diff']:.2g} | "
        f"{rec['setup_s']:.1f} |"
    )


def format_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Reduced-precision inference on the CPU (`--precision`)",
        "",
        f"`{report['command']}` ({report['date']}, commit {report['commit']}; {m['cpu']}, {m['threads']} torch "
        f"threads of {m['cpu_count']} cores, torch {m['torch']}, {m['cpu_capability']}, quantized engine "
        f"{m['quantized_engine']}).",
        "",
        "CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items()) + ".",
        "",
        "ms/image: `Segmenter.predict` (forward + post-processing), best and median of the timed calls after a "
        "warm-up; speed-up: fp32's best over the mode's best. Forward: `Segmenter.infer` alone (the part the mode "
        "changes; post-processing is float32 in every mode). "
        "Agreement: pixels whose label equals fp32's. Score diff: `Segmenter.scores` against fp32 (max, mean). "
        "Setup: building the Segmenter (text embeddings; int8's quantized copy).",
        "",
    ]
    for title, key in (
        ("Shipped tiny models, trained (OVSS-mini evaluation scenes)", "tiny"),
        ("Full-size presets, random weights", "full"),
    ):
        runs = report["runs"].get(key)
        if not runs:
            continue
        lines += [f"## {title}", ""]
        for name, run in runs.items():
            hw = "x".join(map(str, run["image_size"]))
            lines.append(
                f"- {name}: {run['images']} images of {hw}, {run['classes']} classes; load average "
                f"{run['load_average']['before'][0]} before, {run['load_average']['after'][0]} after"
            )
        lines += [
            "",
            "| model | precision | ms/image (best) | ms/image (median) | speed-up | forward ms (best) "
            "| forward speed-up | agreement (%) | max score diff | mean score diff | setup (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_row(name, mode, rec) for name, run in runs.items() for mode, rec in run["modes"].items()]
        lines.append("")
    refused = {mode: s for mode, s in report["modes"].items() if s["status"] != "supported"}
    if refused:
        lines += ["## Refused on this CPU", ""]
        lines += [
            f"- {mode}: {s['reason']}" + (" (timed above, forced)" if s["status"] == "forced" else "")
            for mode, s in refused.items()
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if refuses_to_replace((out_json, out_md), args.overwrite):
        return 2
    import torch

    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/precision.py " + " ".join(shlex.quote(a) for a in given)
    modes = mode_status(args.measure_refused)
    report: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(args.threads),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "modes": modes,
        "runs": {},
    }

    def log(line: str) -> None:
        print(line, flush=True)

    log("modes: " + ", ".join(f"{m} {s['status']}" for m, s in modes.items()))
    start = time.time()
    if not args.no_tiny:
        report["runs"]["tiny"] = tiny_runs(args, modes, log)
    if args.presets:
        report["runs"]["full"] = full_runs(args, modes, log)
    report["wall_s"] = time.time() - start
    write_results(out_json, out_md, report, format_markdown(report), digits=5)
    log(f"wrote {out_json} and {out_md} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
