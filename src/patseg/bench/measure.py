"""Measuring one callable: latency (median of timed runs), peak memory and FLOPs.

- :func:`measure_all` times callables side by side (each round runs each once), reads their peak memory and
  counts their FLOPs.
- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of matmuls, convolutions
  and attention); the fused CPU attention kernels it has no formula for are given one here
  (:func:`_register_attention_formulas`, run on import).
- Peak memory is the CUDA allocator peak, or on CPU the growth of the resident set (Linux ``VmHWM``).
- The limit a part is compared with is :func:`matmul_probe`, a plain matrix product in the same process, threads
  and precision, timed in the same rounds as the parts (:func:`measure_with_probe`); each part's achieved GFLOP/s
  and its fraction of the probe's are filled in (:func:`rate_against`).
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten
_LIBC = ctypes.CDLL(None)  # glibc, for malloc_trim


# ---------------------------------------------------------------------------------------------------- FLOPs
def _register_attention_formulas() -> None:
    """FLOP formulas for the fused attention kernels CPU inference and training dispatch to.

    torch 2.14's counter knows the CUDA SDPA kernels only; without these, CLIP's attention (``nn.MultiheadAttention``
    takes the fused ``_native_multi_head_attention`` path in inference) and every CPU SDPA call would count as zero.
    """

    def missing(op: Any) -> bool:
        return op not in torch.utils.flop_counter.flop_registry

    if missing(aten._scaled_dot_product_flash_attention_for_cpu):

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    if missing(aten._scaled_dot_product_flash_attention_for_cpu_backward):

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
        def _cpu_sdpa_backward(
            grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
        ) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    if missing(aten._native_multi_head_attention):

        @register_flop_formula(aten._native_multi_head_attention)
        def _native_mha(
            query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs
        ) -> int:
            # (B, N, E) queries, (B, S, E) keys: packed q/k/v projections, the output projection, q k^T and a v.
            b, n, e = query_shape
            s = key_shape[1]
            return 2 * (b * n * e * e + 2 * b * s * e * e + b * n * e * e + 2 * b * n * s * e)


_register_attention_formulas()


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (2 per multiply-add), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------- memory
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows where that file is missing."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def proc_status_kb(field_name: str) -> int:
    """A kB field of ``/proc/self/status`` (VmRSS, VmHWM, VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def cpu_peak_supported() -> bool:
    """Linux lets a process reset its resident-set high-water mark (``echo 5 > /proc/self/clear_refs``)."""
    try:
        # A kernel control file, not a file of results: it cannot be replaced, only written in place.
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
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
    before = proc_status_kb("VmRSS")
    fn()
    return max(0, proc_status_kb("VmHWM") - before) / 1024


# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Measurement:
    """median_ms: median of ``runs_ms``; peak_mb: memory above the level before the call (None: not measured);
    gflops: FLOPs of one call / 1e9 (None: not counted); gflops_per_s: achieved rate, gflops / median time;
    of_probe: that rate over the matrix-product probe's, measured in the same rounds (None: not compared)."""

    median_ms: float
    runs_ms: list[float]
    peak_mb: float | None = None
    gflops: float | None = None
    gflops_per_s: float | None = None
    of_probe: float | None = None


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


K = TypeVar("K")


def measure_all(
    fns: dict[K, Callable[[], Any]],
    device: torch.device,
    *,
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    flops: bool = True,
) -> dict[K, Measurement]:
    """Time several callables side by side: each round runs every callable once, so load that comes and goes
    on a shared machine hits all of them alike and their ratios stay meaningful. Then, optionally, one call each
    for peak memory and for FLOPs."""
    for fn in fns.values():
        time_runs(fn, device, warmup=0, repeats=warmup)
    runs: dict[K, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name] += time_runs(fn, device, warmup=0, repeats=1)
    return {
        name: Measurement(
            median_ms=statistics.median(runs[name]),
            runs_ms=[round(r, 2) for r in runs[name]],
            peak_mb=peak_memory_mb(fn, device) if memory else None,
            gflops=count_flops(fn) / 1e9 if flops else None,
        )
        for name, fn in fns.items()
    }


PROBE = "matmul_probe"


def matmul_probe(device: torch.device, mode: str = "fp32", size: int = 2048) -> tuple[Callable[[], Any], float]:
    """The machine's arithmetic limit as a callable and its FLOPs: one (size x size) @ (size x size) product in the
    precision the models run in (fp32; bf16 / fp16 tensors for those autocast modes; int8: a dynamically quantized
    Linear, the op int8 inference runs). 2048 is large enough to run at the BLAS kernel's peak on CPU and GPU."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    if mode == "int8":
        from patseg.precision import prepare_model

        linear = prepare_model(torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)), "int8")
        return (lambda: linear(a)), 2.0 * size**3
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    return (lambda: a @ b), 2.0 * size**3


def rate_against(m: Measurement, probe: Measurement) -> Measurement:
    """``m`` with its achieved GFLOP/s and its fraction of the probe's rate filled in."""
    if m.gflops is None or probe.gflops is None or m.median_ms <= 0:
        return m
    rate = m.gflops / (m.median_ms / 1e3)
    probe_rate = probe.gflops / (probe.median_ms / 1e3)
    m.gflops_per_s, m.of_probe = rate, rate / probe_rate
    return m


def measure_with_probe(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    probe: tuple[Callable[[], Any], float],
    **kwargs: Any,
) -> tuple[dict[str, Measurement], Measurement]:
    """:func:`measure_all` with the matrix-product probe run in every round too: load that comes and goes hits
    the probe and the parts alike. Returns the parts, each rated against the probe, and the probe itself."""
    probe_fn, probe_flops = probe
    results = measure_all({PROBE: probe_fn, **fns}, device, **{**kwargs, "flops": False, "memory": False})
    probe_m = results.pop(PROBE)
    probe_m.gflops = probe_flops / 1e9
    if kwargs.get("flops", True) or kwargs.get("memory", True):  # the extra calls, for the parts only
        for name, fn in fns.items():
            if kwargs.get("memory", True):
                results[name].peak_mb = peak_memory_mb(fn, device)
            if kwargs.get("flops", True):
                results[name].gflops = count_flops(fn) / 1e9
    return {k: rate_against(v, probe_m) for k, v in results.items()}, rate_against(probe_m, probe_m)


def measure(fn: Callable[[], Any], device: torch.device, **kwargs: Any) -> Measurement:
    """Median time of one callable (see :func:`measure_all`)."""
    return measure_all({"fn": fn}, device, **kwargs)["fn"]


def precision(device: torch.device, mode: str = "fp32") -> contextlib.AbstractContextManager:
    """The autocast context of an inference precision (see :mod:`patseg.precision`); fp32 and int8 need none."""
    from patseg.precision import autocast

    return autocast(mode, device)
