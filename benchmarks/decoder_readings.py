"""Compare PAT's decoder readings (``pat.decoder``) and pyramid bases (``pat.pyramid_base``) on one preset.

    python benchmarks/decoder_readings.py --threads 1                          # ViT-B/16, all four combinations
    python benchmarks/decoder_readings.py --combos pixels-clip pixels-side     # a subset
    python benchmarks/decoder_readings.py --preset pat_tiny --size 64 --sizes 64x256 --repeats 1 --out /tmp/x

For each combination of ``pat.decoder`` in {tokens, pixels} (docs/design.md 8.1) and ``pat.pyramid_base`` in
{side, clip} (8.2) it reports, with random weights and a vocabulary of random class embeddings:

- parameters: trainable and total (as ``patseg info``), and the decoder's own;
- ``forward``: one inference forward of the model at SIZE x SIZE, batch 1: FLOPs (total and the decoder modules'),
  CPU time, peak memory;
- ``eval@HxW``: one image evaluated the way ``patseg eval`` does (``Segmenter.predict``: whole image, short side
  kept, one forward, SAN's post-processing), for each of ``--sizes`` (default 640x2560);
- ``train``: one training step (``model.training_losses`` forward, backward, AdamW step) at SIZE x SIZE, batch 1,
  with ``loss.perceptual_weight=0`` (no VGG file): FLOPs of the forward and of forward + backward, time, memory.

How it measures:

- Every combination runs in its own subprocess (this script with ``--one``), its tasks one after the other. Before
  each task the resident-set high-water mark is reset (``/proc/self/clear_refs``); the task's peak memory is
  ``ru_maxrss`` after it minus the resident set before it (the model is built by then). A task that runs past
  ``--timeout`` seconds is killed and recorded as such, and the remaining tasks go on in a fresh subprocess. The
  subprocess's address space is capped at its size after the build plus ``--mem-limit-gib`` (``RLIMIT_AS``, and
  never above the memory available at launch less 2 GiB): an allocation past it is recorded as out of memory.
- The first call of each task is the warm-up, run under ``torch.utils.flop_counter.FlopCounterMode`` (with the
  fused CPU attention formulas of ``patseg.bench``) for the FLOPs, total and per module; the decoder's share is that
  of the modules named by ``--decoder-modules``. Then up to ``--repeats`` timed calls, as many as fit in
  ``--budget-s`` after the warm-up; the median is reported. When not even one fits, the time is the warm-up call's
  (marked in ``timing``): at these sizes the first call's extra cost is small against the arithmetic.
- ``pat.decoder`` is passed only when ``patseg.config.PatConfig`` has that field. Without it the model is today's
  ``pixels`` reading, and ``tokens`` combinations are skipped with a message.

Results go to ``OUT.json`` (every number, the machine, the command) and ``OUT.md`` (tables), written atomically;
an existing result is not replaced without ``--overwrite``. On a machine shared with other work use ``--threads 1``
(``docs/performance.md``, Noise); the load average before and after each combination is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provenance import git_commit, refuses_to_replace, write_results

from patseg.bench.measure import cpu_name, proc_status_kb

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "decoder_readings"
DECODERS = ("tokens", "pixels")
BASES = ("side", "clip")
COMBOS = tuple(f"{d}-{b}" for d in DECODERS for b in BASES)
TASKS = ("forward", "eval", "train")
GIB = 2**30
BUILD_TIMEOUT_S = 600  # imports and the model build, whatever --timeout says


# ---------------------------------------------------------------------------------------------------- arguments
def parse_size(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    try:
        size = (int(h), int(w)) if sep else (int(h), int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 640x2560") from None
    if min(size) < 32 or size[0] % 32 or size[1] % 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be multiples of 32")
    return size


def size_name(hw: tuple[int, int] | list[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="pat_vitb16_clip", help="a PAT preset (default pat_vitb16_clip)")
    p.add_argument("--combos", nargs="+", choices=COMBOS, default=list(COMBOS), help="decoder-base combinations")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="what to measure (default all)")
    p.add_argument("--size", type=int, default=640, help="square side of the forward and training inputs (640)")
    p.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[(640, 2560)], help="HxW images to evaluate (640x2560)"
    )
    p.add_argument("--classes", type=int, default=150, help="vocabulary size, random class embeddings (150)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up, at most (3)")
    p.add_argument("--budget-s", type=float, default=120.0, help="time for the timed calls of one task (120)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one task may run before it is killed (600)")
    p.add_argument("--mem-limit-gib", type=float, default=16.0, help="address space a combination may add (16)")
    p.add_argument(
        "--decoder-modules",
        nargs="+",
        default=["decoder", "pixel_decoder"],
        help="top-level modules whose FLOPs and parameters are the decoder's (decoder pixel_decoder)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.md")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result")
    p.add_argument("--one", metavar="COMBO", choices=COMBOS, help=argparse.SUPPRESS)  # child: one combination
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # child: where it writes its progress
    p.add_argument("--only", nargs="+", help=argparse.SUPPRESS)  # child: the task names left to run
    return p


def decoder_field_exists() -> bool:
    """Whether this checkout's config knows ``pat.decoder`` (the ``tokens`` reading); reading it needs no torch."""
    from patseg.config import PatConfig

    return "decoder" in {f.name for f in dataclasses.fields(PatConfig)}


def combo_overrides(combo: str, has_decoder_field: bool) -> dict[str, Any]:
    decoder, base = combo.split("-")
    overrides: dict[str, Any] = {"pat.pyramid_base": base, "loss.perceptual_weight": 0.0}
    if has_decoder_field:
        overrides["pat.decoder"] = decoder
    return overrides


def task_names(tasks: list[str], sizes: list[tuple[int, int]]) -> list[str]:
    names = []
    for task in TASKS:
        if task in tasks:
            names += [f"eval@{size_name(hw)}" for hw in sizes] if task == "eval" else [task]
    return names


# ---------------------------------------------------------------------------------------------------- memory
def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def _reset_peak() -> bool:
    """Free what can be freed, then reset the resident-set high-water mark (which ``ru_maxrss`` reads)."""
    import ctypes

    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # a kernel control file, written in place
        return True
    except OSError:
        return False


def _available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _limit_address_space(limit_gib: float) -> dict[str, Any]:
    """Cap the address space at its present size plus ``limit_gib`` (less when less memory is available)."""
    allowed = min(limit_gib * GIB, max(0, _available_kb() * 1024 - 2 * GIB))
    cap = proc_status_kb("VmSize") * 1024 + int(allowed)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return {"allowed_gib": round(allowed / GIB, 2), "rlimit_as_gib": round(cap / GIB, 2)}


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "Cannot allocate memory" in str(exc)


# ---------------------------------------------------------------------------------------------------- child
def _flop_summary(counts: dict[str, dict[Any, int]], root: str, decoder_modules: list[str]) -> dict[str, Any]:
    """GFLOPs in total, of the decoder modules, and per top-level module (a module's FLOPs go to the top-level
    module it belongs to; one called inside another's forward, e.g. a semantic branch in the side ViT, counts in
    both)."""
    flops = {name: sum(ops.values()) for name, ops in counts.items()}
    total = flops.get("Global", 0)
    names = [n.split(".")[1:] for n in flops if n.startswith(root + ".")]
    present = {tuple(n) for n in names}
    modules: dict[str, int] = {}
    for parts in present:
        if any(parts[:i] in present for i in range(1, len(parts))):
            continue  # counted in an enclosing module
        modules[parts[0]] = modules.get(parts[0], 0) + flops[".".join((root, *parts))]
    decoder = sum(modules.get(name, 0) for name in decoder_modules)
    return {
        "total": total / 1e9,
        "decoder": decoder / 1e9,
        "decoder_share": decoder / total if total else None,
        "modules": {k: v / 1e9 for k, v in sorted(modules.items())},
    }


def _measure(
    fn: Callable[[Any], None], *, repeats: int, budget_s: float, root: str, decoder_modules: list[str]
) -> dict[str, Any]:
    """Warm-up call under FlopCounterMode (FLOPs), then timed calls; peak memory over all of them.

    ``fn(counter)`` runs the work once; ``counter`` is the FlopCounterMode of the warm-up (None after), so that a
    training step can note the forward's count before its backward.
    """
    from torch.utils.flop_counter import FlopCounterMode

    import patseg.bench  # noqa: F401  # registers the fused CPU attention FLOP formulas

    reset = _reset_peak()
    before_kb = proc_status_kb("VmRSS") if reset else _maxrss_kb()
    with FlopCounterMode(display=False, depth=None) as counter:
        start = time.perf_counter()
        fn(counter)
        first_s = time.perf_counter() - start
    result: dict[str, Any] = {"gflops": _flop_summary(counter.get_flop_counts(), root, decoder_modules)}
    result.update(getattr(counter, "patseg_snapshots", {}))
    runs = min(repeats, int(budget_s // first_s)) if first_s > 0 else repeats
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(None)
        times.append(time.perf_counter() - start)
    peak_kb = _maxrss_kb()
    result.update(
        {
            "median_ms": 1e3 * (statistics.median(times) if times else first_s),
            "runs_ms": [round(1e3 * t, 1) for t in times] if times else [round(1e3 * first_s, 1)],
            "first_call_ms": round(1e3 * first_s, 1),
            "timing": f"median of {runs} after a warm-up"
            if times
            else "the first call alone (FLOP-counted, no warm-up): one call took longer than --budget-s",
            "peak_mb": max(0, peak_kb - before_kb) / 1024,
            "peak_rss_mb": peak_kb / 1024,
            "rss_before_mb": before_kb / 1024,
            "peak_method": "ru_maxrss after the task - VmRSS before it, high-water mark reset (clear_refs)"
            if reset
            else "ru_maxrss growth over the task (no reset: a lower bound when an earlier task peaked higher)",
        }
    )
    return result


def _snapshot(counter: Any, key: str, root: str, decoder_modules: list[str]) -> None:
    if counter is not None:
        snaps = getattr(counter, "patseg_snapshots", {})
        snaps[key] = _flop_summary(counter.get_flop_counts(), root, decoder_modules)
        counter.patseg_snapshots = snaps


def _forward_task(model: Any, emb: Any, size: int, measure: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    import torch

    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def run(counter: Any) -> None:
        with torch.inference_mode():
            model(x, emb)

    return {"size": [size, size], **measure(run)}


def _eval_task(model: Any, classes: int, hw: tuple[int, int], measure: Callable[..., dict[str, Any]]) -> dict:
    from patseg.bench import make_segmenter, random_image

    seg = make_segmenter(model, classes, hw)  # short side = the image's, long side up to 4x: 640 / 2560 at 640x2560
    image = random_image(*hw)
    padded = tuple(seg._prepare(image)[0].shape[-2:])
    return {"size": list(hw), "model_input": list(padded), **measure(lambda counter: seg.predict(image))}


def _train_task(
    model: Any, classes: int, size: int, measure: Callable[..., dict[str, Any]], root: str, decoder_modules: list[str]
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    model.train()
    model.prepare_training()  # loss.perceptual_weight=0: no LPIPS network, no file
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=gen)
    blocks = torch.randint(0, classes, (1, 4, 4), generator=gen)  # 16 regions, as patseg bench's training step
    labels = F.interpolate(blocks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    emb = F.normalize(torch.randn(classes, model.clip.out_dim, generator=gen), dim=-1)
    calls: list[tuple[Any, Any, Any]] = []  # (module, args, kwargs) of the decoder modules in the counted step

    def step(counter: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        hooks = [] if counter is None else _record_calls(model, decoder_modules, calls)
        try:
            loss = model.training_losses(images, labels, emb).total
        finally:
            for hook in hooks:
                hook.remove()
        _snapshot(counter, "gflops_forward", root, decoder_modules)
        loss.backward()
        optimizer.step()

    result = measure(step)
    step_flops = result.pop("gflops")
    # FlopCounterMode's module tracking misplaces backward FLOPs (they land in modules whose backward is in
    # progress, not in the ones whose ops run): the decoder's share of the step is counted by replaying it alone.
    decoder = sum(_replay_flops(*call) for call in calls)
    result["gflops_step"] = {
        "total": step_flops["total"],
        "decoder": decoder / 1e9,
        "decoder_share": decoder / 1e9 / step_flops["total"] if step_flops["total"] else None,
        "decoder_method": "the decoder modules replayed alone, forward + backward, on their recorded inputs",
    }
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"size": [size, size], "includes": "forward, backward, AdamW step", **result}


def _record_calls(model: Any, names: list[str], calls: list[tuple[Any, Any, Any]]) -> list[Any]:
    """Forward hooks that keep each call of the named modules with its inputs detached (requires_grad kept)."""
    from torch.utils._pytree import tree_map

    def keep(x: Any) -> Any:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().requires_grad_(x.requires_grad)
        return x

    def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        calls.append((module, tree_map(keep, args), tree_map(keep, kwargs)))

    modules = [getattr(model, n) for n in names if getattr(model, n, None) is not None]
    return [m.register_forward_hook(hook, with_kwargs=True) for m in modules]


def _replay_flops(module: Any, args: Any, kwargs: Any) -> int:
    """FLOPs of ``module(*args, **kwargs)`` and the backward of its outputs' sum, as in the training step: weight
    gradients, and input gradients where the recorded inputs required them."""
    import torch
    from torch.utils._pytree import tree_flatten, tree_map
    from torch.utils.flop_counter import FlopCounterMode

    def fresh(x: Any) -> Any:
        return x.detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x

    args, kwargs = tree_map(fresh, args), tree_map(fresh, kwargs)
    with FlopCounterMode(display=False) as counter:
        outputs = [t for t in tree_flatten(module(*args, **kwargs))[0] if isinstance(t, torch.Tensor)]
        total = sum(t.float().sum() for t in outputs if t.requires_grad)
        if isinstance(total, torch.Tensor):
            total.backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run_one(args: argparse.Namespace) -> int:
    """Child: build one combination and run its tasks, writing the progress to ``args.result`` after each."""
    state: dict[str, Any] = {"combo": args.one, "tasks": {}, "current": {"task": "build", "started": time.time()}}

    def save() -> None:
        from patseg.atomic import atomic_write_json

        atomic_write_json(args.result, state)

    save()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from patseg.bench import cached_vocabulary
    from patseg.build import build_model
    from patseg.models.introspect import count

    overrides = combo_overrides(args.one, decoder_field_exists())
    model = build_model(args.preset, overrides=overrides).eval()
    if model.config.pat is None:
        raise SystemExit(f"{args.preset} is not a PAT preset")
    total, trainable = count(model.parameters())
    dec_total, dec_trainable = 0, 0
    for name in args.decoder_modules:
        module = getattr(model, name, None)
        if module is not None:
            t, tr = count(module.parameters())
            dec_total, dec_trainable = dec_total + t, dec_trainable + tr
    names = cached_vocabulary(model, args.classes)
    with torch.inference_mode():
        emb = model.encode_vocabulary(names)  # served from the primed cache: the text tower does not run
    root = type(model).__name__
    state.update(
        {
            "overrides": overrides,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "params": {
                "total": total,
                "trainable": trainable,
                "decoder_total": dec_total,
                "decoder_trainable": dec_trainable,
            },
            "rss_after_build_mb": proc_status_kb("VmRSS") / 1024,
            "maxrss_after_build_mb": _maxrss_kb() / 1024,
            "memory_limit": _limit_address_space(args.mem_limit_gib),
        }
    )

    def measure(fn: Callable[[Any], None]) -> dict[str, Any]:
        return _measure(
            fn, repeats=args.repeats, budget_s=args.budget_s, root=root, decoder_modules=args.decoder_modules
        )

    for task in args.only:
        state["current"] = {"task": task, "started": time.time()}
        save()
        try:
            if task == "forward":
                out = _forward_task(model, emb, args.size, measure)
            elif task == "train":
                out = _train_task(model, args.classes, args.size, measure, root, args.decoder_modules)
            else:
                out = _eval_task(model, args.classes, parse_size(task.removeprefix("eval@")), measure)
            out = {"status": "ok", **out}
        except Exception as exc:  # recorded, and the next task still runs
            model.eval()
            model.zero_grad(set_to_none=True)
            status = "out of memory" if _out_of_memory(exc) else "error"
            out = {"status": status, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            del exc
        out["wall_s"] = time.time() - state["current"]["started"]
        state["tasks"][task] = out
        state["current"] = None
        save()
    return 0


# ---------------------------------------------------------------------------------------------------- parent
def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _child_command(args: argparse.Namespace, combo: str, tasks: list[str], result: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", combo, "--result", str(result), "--only", *tasks]
    cmd += ["--preset", args.preset, "--size", str(args.size), "--classes", str(args.classes)]
    cmd += ["--repeats", str(args.repeats), "--budget-s", str(args.budget_s), "--threads", str(args.threads)]
    cmd += ["--mem-limit-gib", str(args.mem_limit_gib), "--decoder-modules", *args.decoder_modules]
    return cmd


def run_combo(args: argparse.Namespace, combo: str, tasks: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run one combination's tasks in subprocesses: one, plus a fresh one after a task is killed."""
    record: dict[str, Any] = {"tasks": {}}
    remaining = list(tasks)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="decoder_readings-") as tmp:
        attempt = 0
        while remaining:
            attempt += 1
            result, stderr_path = Path(tmp) / f"state{attempt}.json", Path(tmp) / f"stderr{attempt}.txt"
            with open(stderr_path, "wb") as stderr:
                proc = subprocess.Popen(
                    _child_command(args, combo, remaining, result),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
                killed = None
                while proc.poll() is None:
                    time.sleep(0.5)
                    current = _read_state(result).get("current")
                    limit = BUILD_TIMEOUT_S if current and current["task"] == "build" else args.timeout
                    if current and time.time() - current["started"] > limit:
                        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its threads only
                        proc.wait()
                        killed = current["task"]
            state = _read_state(result)
            for key in ("overrides", "torch", "threads", "params", "rss_after_build_mb", "memory_limit"):
                if key in state:
                    record.setdefault(key, state[key])  # as in the first subprocess; each one's in "attempts"
            record.setdefault("attempts", []).append(
                {
                    "tasks": list(remaining),
                    "returncode": proc.returncode,
                    **{
                        k: state[k]
                        for k in ("rss_after_build_mb", "maxrss_after_build_mb", "memory_limit")
                        if k in state
                    },
                }
            )
            record["tasks"].update(state.get("tasks", {}))
            current = (state.get("current") or {}).get("task")
            if killed:
                if killed == "build":
                    record["error"] = f"importing and building the model took longer than {BUILD_TIMEOUT_S} s"
                    break
                record["tasks"][killed] = {"status": "timeout", "error": f"killed after {args.timeout:.0f} s"}
                log(f"  {combo}: {killed} ran past {args.timeout:.0f} s; killed")
            elif proc.returncode != 0:
                tail = stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
                why = f"exit status {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}"
                if current in (None, "build"):
                    record["error"] = f"the subprocess failed ({why}): " + " | ".join(tail)
                    break
                status = "killed" if proc.returncode < 0 else "error"
                record["tasks"][current] = {"status": status, "error": f"{why}: " + " | ".join(tail)}
                log(f"  {combo}: {current} failed ({why})")
            remaining = [t for t in remaining if t not in record["tasks"]]
    record["tasks"] = {t: record["tasks"][t] for t in tasks if t in record["tasks"]}
    return record


def machine_info(threads: int) -> dict[str, Any]:
    mem = {
        line.split(":")[0]: int(line.split()[1]) // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.split(":")[0] in ("MemTotal", "MemAvailable")
    }
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "memory_total_mb": mem.get("MemTotal"),
        "memory_available_mb": mem.get("MemAvailable"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def summary_line(combo: str, rec: dict[str, Any]) -> str:
    if rec.get("status") == "skipped":
        return f"{combo}: skipped ({rec['reason']})"
    if "error" in rec:
        return f"{combo}: failed: {rec['error']}"
    parts = [f"{rec['params']['trainable'] / 1e6:.2f}M trainable"]
    for task, t in rec["tasks"].items():
        if t["status"] != "ok":
            parts.append(f"{task} {t['status']}")
            continue
        flops = t.get("gflops_forward", t.get("gflops", {}))
        gf = flops.get("total", 0)
        dec = flops.get("decoder", 0)
        parts.append(f"{task} {t['median_ms'] / 1e3:.2f} s, {gf:.1f} GF (decoder {dec:.1f}), {t['peak_mb']:.0f} MB")
    return f"{combo}: " + "; ".join(parts) + f" [{rec['wall_s']:.0f} s]"


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def _cell(t: dict[str, Any] | None, what: str) -> str:
    if t is None:
        return ""
    if t["status"] != "ok":
        return t["status"]
    if what == "time":
        return f"{t['median_ms'] / 1e3:,.2f}" + ("*" if not t["timing"].startswith("median") else "")
    if what == "peak":
        return _fmt(t["peak_mb"])
    flops = t[what]
    share = flops["decoder_share"]
    return f"{flops['total']:,.1f} ({flops['decoder']:,.1f}, {100 * share:.0f}%)" if share is not None else ""


def format_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    size = f"{s['size']}x{s['size']}"
    evals = [f"eval@{size_name(hw)}" for hw in s["eval_sizes"]] if "eval" in s["tasks"] else []
    m = report["machine"]
    lines = [
        f"# PAT decoder readings: {s['preset']}",
        "",
        f"`{report['command']}`",
        "",
        f"{report['date']}, commit {report['commit']}; {m['cpu']}, {m['threads']} thread(s) of {m['cpu_count']}, "
        f"torch {report.get('torch', '?')}; random weights, batch 1, {s['classes']} random class embeddings.",
        "",
        "GFLOPs are `FlopCounterMode` counts (2 per multiply-add), as total (decoder, decoder share); the decoder is "
        f"{', '.join(f'`{n}`' for n in s['decoder_modules'])}. Times are seconds (median; `*`: a single first call, "
        "see the JSON), peak memory is the resident-set growth in MB.",
        "",
        "| decoder | base | trainable params | total params | decoder params | forward GFLOPs | "
        + " | ".join(f"{e} GFLOPs" for e in evals)
        + (" | train fwd GFLOPs | train fwd+bwd GFLOPs" if "train" in s["tasks"] else "")
        + " |",
    ]
    ncols = 6 + len(evals) + (2 if "train" in s["tasks"] else 0)
    lines.append("|" + " --- |" * ncols)
    rows2 = []
    for rec in report["combinations"]:
        head = f"| {rec['decoder']} | {rec['pyramid_base']} |"
        if rec.get("status") == "skipped" or "error" in rec:
            note = "skipped" if rec.get("status") == "skipped" else "failed"
            lines.append(head + f" {note} |" + " |" * (ncols - 3))
            rows2.append(head + f" {note} |" + " |" * (2 + 2 * len(evals) + (2 if "train" in s["tasks"] else 0)))
            continue
        p, t = rec["params"], rec["tasks"]
        cells = [
            _fmt(p["trainable"]),
            _fmt(p["total"]),
            _fmt(p["decoder_trainable"]),
            _cell(t.get("forward"), "gflops"),
        ]
        cells += [_cell(t.get(e), "gflops") for e in evals]
        if "train" in s["tasks"]:
            cells += [_cell(t.get("train"), "gflops_forward"), _cell(t.get("train"), "gflops_step")]
        lines.append(head + " " + " | ".join(cells) + " |")
        cells2 = [_cell(t.get("forward"), "time"), _cell(t.get("forward"), "peak")]
        for e in evals:
            cells2 += [_cell(t.get(e), "time"), _cell(t.get(e), "peak")]
        if "train" in s["tasks"]:
            cells2 += [_cell(t.get("train"), "time"), _cell(t.get("train"), "peak")]
        cells2.append(_fmt(rec.get("wall_s")))
        rows2.append(head + " " + " | ".join(cells2) + " |")
    header2 = ["decoder", "base", f"forward {size} s", "forward peak MB"]
    for e in evals:
        header2 += [f"{e} s", f"{e} peak MB"]
    if "train" in s["tasks"]:
        header2 += [f"train step {size} s", "train peak MB"]
    header2.append("wall s")
    lines += ["", "| " + " | ".join(header2) + " |", "|" + " --- |" * len(header2), *rows2, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.one:
        return run_one(args)
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if refuses_to_replace((out_json, out_md), args.overwrite):
        return 2
    has_field = decoder_field_exists()
    tasks = task_names(args.tasks, args.sizes)
    combos = [c for c in COMBOS if c in args.combos]
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/decoder_readings.py " + " ".join(shlex.quote(a) for a in given)
    report: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(args.threads),
        "settings": {
            "preset": args.preset,
            "size": args.size,
            "eval_sizes": [list(hw) for hw in args.sizes],
            "classes": args.classes,
            "tasks": args.tasks,
            "repeats": args.repeats,
            "budget_s": args.budget_s,
            "timeout_s": args.timeout,
            "mem_limit_gib": args.mem_limit_gib,
            "decoder_modules": args.decoder_modules,
        },
        "config_has_decoder_field": has_field,
        "combinations": [],
    }
    if not has_field:
        print(
            "patseg.config.PatConfig has no 'decoder' field yet: the model is today's 'pixels' reading; "
            "pixels combinations run without the pat.decoder key, tokens combinations are skipped",
            flush=True,
        )
    for i, combo in enumerate(combos, 1):
        decoder, base = combo.split("-")
        rec: dict[str, Any] = {"name": combo, "decoder": decoder, "pyramid_base": base}
        if decoder == "tokens" and not has_field:
            rec.update(status="skipped", reason="this checkout has no pat.decoder field (no tokens reading)")
        else:
            print(f"[{i}/{len(combos)}] {combo}: {', '.join(tasks)} ...", flush=True)
            start, load_before = time.time(), os.getloadavg()
            rec.update(run_combo(args, combo, tasks, lambda line: print(line, flush=True)))
            rec["wall_s"] = time.time() - start
            rec["load_average"] = {
                "before": [round(v, 2) for v in load_before],
                "after": [round(v, 2) for v in os.getloadavg()],
            }
            ok = "error" not in rec and all(t["status"] == "ok" for t in rec["tasks"].values())
            rec["status"] = "ok" if ok else ("failed" if "error" in rec else "partial")
            report.setdefault("torch", rec.get("torch"))
        print(f"[{i}/{len(combos)}] " + summary_line(combo, rec), flush=True)
        report["combinations"].append(rec)
    write_results(out_json, out_md, report, format_markdown(report), digits=4)
    print(f"wrote {out_json} and {out_md}", flush=True)
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["combinations"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
