"""Images per second of ``patseg segment`` on a folder: one at a time, with the loader and batches, and torchrun.

    python benchmarks/segment_throughput.py                                 # san_tiny, pat_tiny, san_vitb16
    python benchmarks/segment_throughput.py --presets san_tiny --images 16 --out /tmp/x    # a quick look

For each preset it saves a model with random weights (``save_weights``, CLIP included, so ``--weights`` alone
rebuilds it), writes a folder of synthetic JPEG photos (block images of a few sizes, most of them repeated, in a
shuffled order) and runs ``patseg segment FOLDER --weights W --dataset ade20k_150`` in three modes:

- ``sequential``: one process, 2 threads, ``--batch-size 1 --workers 0``: the way it segmented before the loader;
- ``batched``: one process, 2 threads, decoding in ``--workers`` processes, ``--batch-size`` images of one input
  size per forward pass;
- ``torchrun``: ``torchrun --nproc_per_node=2``, 1 thread each, ``--ddp-workers`` decoding processes each, the
  same batch size.

How it measures: ``patseg -v`` logs ``wrote NAME`` as each image's outputs are in place; the script reads these
lines as they arrive. ``steady`` is the rate from the later of the first round (the first batch of every
process) and the first quarter of the images to the last image, which leaves out the start (imports, the model
build, the vocabulary); ``end to end`` divides the images by the whole command's wall time. A warm-up run on one
image comes first, so the text embeddings are cached (in a temporary ``PATSEG_CACHE``) and the files are in the page
cache for every mode. The modes take turns ``--repeats`` times and the fastest run of each is reported (all are
in the JSON): on a shared machine the fastest run is the least disturbed one.

Results go to ``OUT.json`` (every number, the machine, its load average before and after each run) and ``OUT.md``,
written atomically; an existing result is not replaced without ``--overwrite``. On a machine shared with other
work the absolute numbers move with the load; the ratios between modes measured back to back move less.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from provenance import git_commit, refuses_to_replace, write_results

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "segment-throughput"
# (H, W) of the synthetic photos and how often each comes: mostly 4:3 landscape, as a camera folder.
SIZES = (((480, 640), 6), ((640, 480), 2), ((375, 500), 1), ((427, 640), 1))
MODES = ("sequential", "batched", "torchrun")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["san_tiny", "pat_tiny", "san_vitb16"], help="models to run")
    p.add_argument("--images", type=int, default=64, help="images for the tiny presets (64)")
    p.add_argument("--short-side", type=int, default=128, help="--short-side for the tiny presets (128)")
    p.add_argument("--full-images", type=int, default=16, help="images for the other presets (16)")
    p.add_argument("--full-short-side", type=int, default=320, help="--short-side for the other presets (320)")
    p.add_argument("--batch-size", type=int, default=4, help="--batch-size of the batched and torchrun modes (4)")
    p.add_argument("--workers", type=int, default=2, help="--workers of the batched mode (2)")
    p.add_argument("--ddp-workers", type=int, default=1, help="--workers of each torchrun process (1)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, taking turns; the fastest counts (2)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take (900)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result")
    return p


def write_photos(folder: Path, count: int, seed: int = 0) -> dict[str, int]:
    """``count`` JPEG block images of :data:`SIZES` in a shuffled order; returns how many of each size."""
    rng = np.random.default_rng(seed)
    sizes = [hw for hw, weight in SIZES for _ in range(weight)]
    folder.mkdir(parents=True)
    made: dict[str, int] = {}
    for i in range(count):
        h, w = sizes[rng.integers(len(sizes))]
        cells = rng.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3)).astype(np.uint8)
        image = np.kron(cells, np.ones((40, 40, 1), dtype=np.uint8))[:h, :w]
        Image.fromarray(image).save(folder / f"photo{i:04d}.jpg", quality=90)
        made[f"{h}x{w}"] = made.get(f"{h}x{w}", 0) + 1
    return made


def save_model(preset: str, path: Path) -> None:
    """Random weights of ``preset`` (CLIP and text tower too), in a file that ``--weights`` rebuilds alone."""
    import torch

    from patseg.build import build_model
    from patseg.weights.files import save_weights

    torch.manual_seed(0)
    save_weights(build_model(preset), path)


def command(mode: str, folder: Path, weights: Path, out: Path, short_side: int, args: argparse.Namespace) -> list[str]:
    if mode == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "patseg"]
        extra = ["--batch-size", str(args.batch_size), "--workers", str(args.ddp_workers)]
    else:
        head = [sys.executable, "-m", "patseg"]
        batch, workers = (args.batch_size, args.workers) if mode == "batched" else (1, 0)
        extra = ["--batch-size", str(batch), "--workers", str(workers)]
    segment = ["segment", str(folder), "--weights", str(weights), "--dataset", "ade20k_150", "--device", "cpu"]
    return [*head, "-v", *segment, "--out", str(out), "--short-side", str(short_side), *extra]


def timed_run(cmd: list[str], threads: int, cache: Path, first_round: int, timeout: float) -> dict[str, Any]:
    """Run ``cmd``; the arrival time of every ``wrote NAME`` line, the steady and end-to-end rates."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads), "PATSEG_CACHE": str(cache)}
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals: list[float] = []
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:  # text mode: tqdm's carriage returns end lines too
        if ": wrote " in line:
            arrivals.append(time.perf_counter() - start)
        else:
            tail = (tail + [line])[-20:]
        if time.perf_counter() - start > timeout:
            proc.kill()
            break
    stdout = proc.communicate()[0]
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{''.join(tail)}")
    done = len(arrivals)
    skip = max(first_round, done // 4)  # past every process's first batch and the loader's start
    steady = (done - skip) / (arrivals[-1] - arrivals[skip - 1]) if done > skip else None
    return {
        "images": done,
        "wall_s": round(wall, 2),
        "first_output_s": round(arrivals[0], 2) if arrivals else None,
        "steady_img_s": round(steady, 3) if steady else None,
        "end_to_end_img_s": round(done / wall, 3),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "summary": stdout.strip().splitlines()[-1] if stdout.strip() else "",
    }


def run_preset(preset: str, work: Path, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    tiny = preset.endswith("_tiny")
    count, short_side = (args.images, args.short_side) if tiny else (args.full_images, args.full_short_side)
    weights = work / f"{preset}.safetensors"
    t0 = time.perf_counter()
    save_model(preset, weights)
    log(f"{preset}: random weights saved in {time.perf_counter() - t0:.0f} s")
    folder = work / f"{preset}-photos"
    sizes = write_photos(folder, count)
    warm = work / f"{preset}-warm"
    warm.mkdir()
    (warm / "photo.jpg").write_bytes((folder / "photo0000.jpg").read_bytes())
    timed_run(command("sequential", warm, weights, work / f"{preset}-warm-out", short_side, args), 2, work, 1, 900)
    result: dict[str, Any] = {"images": count, "short_side": short_side, "sizes": sizes, "modes": {}}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):  # the modes take turns, so a burst of load from elsewhere hits one run each
        for mode in MODES:
            threads = 1 if mode == "torchrun" else 2
            first_round = {"sequential": 1, "batched": args.batch_size, "torchrun": 2 * args.batch_size}[mode]
            cmd = command(mode, folder, weights, work / f"{preset}-{mode}-{repeat}", short_side, args)
            rec = timed_run(cmd, threads, work, first_round, args.timeout)
            runs[mode].append(rec)
            log(f"{preset} {mode}: steady {rec['steady_img_s']} img/s, end to end {rec['end_to_end_img_s']} img/s")
    for mode, recs in runs.items():  # the least disturbed run: the fastest
        best = dict(max(recs, key=lambda r: r["steady_img_s"] or 0.0))
        shown = command(mode, Path("PHOTOS"), Path(f"{preset}.safetensors"), Path("OUT"), short_side, args)
        best["command"] = " ".join(["python", *shown[1:]])
        best["all_steady_img_s"] = [r["steady_img_s"] for r in recs]
        best["all_end_to_end_img_s"] = [r["end_to_end_img_s"] for r in recs]
        result["modes"][mode] = best
    base = result["modes"]["sequential"]
    for rec in result["modes"].values():
        for key in ("steady_img_s", "end_to_end_img_s"):
            rec[key.replace("_img_s", "_ratio")] = round(rec[key] / base[key], 2) if rec[key] and base[key] else None
    return result


def machine_info() -> dict[str, Any]:
    from patseg.bench.measure import cpu_name

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `patseg segment` throughput",
        "",
        f"{report['date']}, {report['machine']['cpu']} ({report['machine']['cpu_count']} cores), "
        f"commit {report['commit']}. Random weights, `--dataset ade20k_150` (150 classes), synthetic JPEG photos "
        "(sizes below, shuffled). `sequential`: 1 process, 2 threads, `--batch-size 1 --workers 0`; `batched`: 1 "
        f"process, 2 threads, `--batch-size {report['settings']['batch_size']} --workers "
        f"{report['settings']['workers']}`; `torchrun`: 2 processes x 1 thread, `--batch-size "
        f"{report['settings']['batch_size']} --workers {report['settings']['ddp_workers']}` each. Steady: images/s "
        "from the later of every process's first batch and a quarter of the images to the last; end to end: "
        "images / wall time of the whole command (start included). Each mode ran "
        f"{report['settings']['repeats']} times, taking turns; the table shows the fastest run (all runs in the JSON).",
        "",
        "| preset | images | short side | mode | steady img/s | x | end to end img/s | x | wall s | load before |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for preset, res in report["presets"].items():
        for mode, rec in res["modes"].items():
            lines.append(
                f"| {preset} | {res['images']} | {res['short_side']} | {mode} | {rec['steady_img_s']} | "
                f"{rec['steady_ratio']} | {rec['end_to_end_img_s']} | {rec['end_to_end_ratio']} | {rec['wall_s']} | "
                f"{' / '.join(map(str, rec['load_before']))} |"
            )
    lines += ["", "Sizes (H x W: count): " + "; ".join(f"{p}: {r['sizes']}" for p, r in report["presets"].items())]
    lines += ["", f"Load average (1/5/15 min) at the start: {' / '.join(map(str, report['load_start']))}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(SRC))

    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if refuses_to_replace((out_json, out_md), args.overwrite):
        return 2
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": machine_info(),
        "load_start": [round(v, 2) for v in os.getloadavg()],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "presets": {},
    }

    def log(text: str) -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="segment-throughput-") as tmp:
        for preset in args.presets:
            work = Path(tmp) / preset
            work.mkdir()
            report["presets"][preset] = run_preset(preset, work, args, log)
    write_results(out_json, out_md, report, format_markdown(report))
    print(format_markdown(report))
    print(json.dumps({"written": [str(out_json), str(out_md)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
