"""The kernel bound: what a call would take if nothing but its dense kernels cost time.

:func:`record_dense_ops` runs a callable once and records every op that has a FLOP formula (matrix products,
convolutions, attention: the ops ``FlopCounterMode`` counts, decided the same way), each with the shapes, strides,
dtypes and devices of its arguments. :func:`kernel_bound` groups the records by that signature and replays each
signature alone, on fresh tensors of the same layout, timed in rounds with the matrix-product probe; the bound is the
sum over signatures of the median time x the number of calls.

Why it is a bound: each kernel runs alone with warm caches and nothing between calls, so its time is what these exact
op shapes take in this PyTorch build. If the whole call took only that, nothing but the dense kernels would cost; the
end-to-end time over the bound is the share spent elsewhere (memory-bound ops, Python glue, post-processing), and the
bound's rate against the probe says how close the model's own shapes (narrow heads, small projections) can get to the
probe at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

# Importing measure registers its formulas for the fused CPU attention ops: recorded as FlopCounterMode counts them.
from patseg.bench.measure import Measurement, measure_all, measure_with_probe, rate_against

aten = torch.ops.aten

# Metadata queries FlopCounterMode leaves to the next handler; mirrored so the two modes see the same ops.
_METADATA = {
    aten.sym_is_contiguous.default,
    aten.is_contiguous.default,
    aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default,
    aten.is_non_overlapping_and_dense.default,
    aten.size.default,
    aten.sym_size.default,
    aten.stride.default,
    aten.sym_stride.default,
    aten.storage_offset.default,
    aten.sym_storage_offset.default,
    aten.numel.default,
    aten.sym_numel.default,
    aten.dim.default,
    torch.ops.prim.layout.default,
}


@dataclass(frozen=True)
class TensorSpec:
    """What a replay needs of a tensor argument: its layout, not its values."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype, t.device)

    def fresh(self, gen: torch.Generator) -> torch.Tensor:
        """A new tensor of this layout: small random floats (x 0.1), integer zeros (valid indices), bools True (an
        attention mask that masks nothing). The storage covers every element the strides reach, so overlapping
        layouts (stride 0 of ``expand``) are rebuilt too, which filling an ``empty_strided`` tensor would refuse."""
        size = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) if all(self.shape) else 0
        if self.dtype.is_floating_point or self.dtype.is_complex:
            base = (torch.randn(size, generator=gen) * 0.1).to(self.dtype)
        elif self.dtype == torch.bool:
            base = torch.ones(size, dtype=torch.bool)
        else:
            base = torch.zeros(size, dtype=self.dtype)
        return base.to(self.device).as_strided(self.shape, self.stride)


def _freeze(x: Any) -> Any:
    """A hashable form of a signature (lists as tuples, dicts as sorted items)."""
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    return x


@dataclass
class DenseOp:
    """One recorded call: ``args`` / ``kwargs`` with a :class:`TensorSpec` in place of each tensor, and the FLOPs
    torch's formula gives it (2 per multiply-add)."""

    op: torch._ops.OpOverload
    args: tuple
    kwargs: dict[str, Any]
    flops: int

    @property
    def name(self) -> str:
        return str(self.op._overloadpacket)  # e.g. aten.addmm

    def key(self) -> Any:
        return (self.op, _freeze(self.args), _freeze(self.kwargs))

    def shapes(self) -> str:
        """The tensor arguments' shapes, e.g. ``1700x240, 240x720 bf16`` (dtype named unless float32)."""
        specs = [a for a in (*self.args, *self.kwargs.values()) if isinstance(a, TensorSpec)]
        text = ", ".join("x".join(map(str, s.shape)) or "scalar" for s in specs)
        dtypes = {str(s.dtype).removeprefix("torch.") for s in specs if s.dtype.is_floating_point}
        return text + "".join(f" {d}" for d in sorted(dtypes - {"float32"}))

    def replay(self, seed: int = 0) -> Callable[[], Any]:
        """A callable that runs the op on fresh tensors of the recorded layout (built now, reused at every call)."""
        gen = torch.Generator().manual_seed(seed)
        args, kwargs = tree_map(lambda a: a.fresh(gen) if isinstance(a, TensorSpec) else a, (self.args, self.kwargs))
        return lambda: self.op(*args, **kwargs)


class _Recorder(TorchDispatchMode):
    """Records the ops FlopCounterMode would count, with the same decisions, so the FLOP sums agree."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[DenseOp] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA or isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        registry = flop_counter.flop_registry
        # FlopCounterMode's own test: it looks up the overload in a registry keyed by packets, so every op is offered
        # for decomposition first; only ops with a composite kernel decompose, and their parts come back here.
        if func not in registry and func is not torch.ops.prim.device.default:
            with self:
                out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        # Inside this method the mode is off: a kernel's internal calls (native MHA's matmuls) are not seen.
        out = func(*args, **kwargs)
        formula = registry.get(func._overloadpacket)
        if formula is not None:
            spec = tree_map(lambda a: TensorSpec.of(a) if isinstance(a, torch.Tensor) else a, (args, kwargs))
            self.ops.append(DenseOp(func, spec[0], spec[1], int(formula(*args, **kwargs, out_val=out))))
        return out


def record_dense_ops(fn: Callable[[], Any]) -> list[DenseOp]:
    """Run ``fn()`` once and return its dense ops in call order; their FLOPs sum to ``count_flops(fn)``."""
    recorder = _Recorder()
    with recorder:
        fn()
    return recorder.ops


def group_ops(ops: list[DenseOp]) -> list[tuple[DenseOp, int]]:
    """Unique signatures in first-call order, each with its number of calls."""
    groups: dict[Any, list[Any]] = {}
    for op in ops:
        groups.setdefault(op.key(), [op, 0])[1] += 1
    return [(op, calls) for op, calls in groups.values()]


@dataclass
class KernelRow:
    """One signature: ``per_call_ms`` its median alone, ``ms`` that x ``calls``; gflops and the rate are for all
    calls together."""

    op: str
    shapes: str
    calls: int
    per_call_ms: float
    ms: float
    gflops: float
    gflops_per_s: float | None = None
    of_probe: float | None = None


@dataclass
class KernelBound(Measurement):
    """The bound as a :class:`Measurement` (``median_ms``: sum of the rows' ``ms``; ``runs_ms``: per-round sums;
    ``gflops``: the replayed ops' FLOPs), rated against the probe like every other entry. ``rows``: signatures by
    time, most expensive first (the first ``top`` of ``signatures``); ``skipped``: signatures that could not be
    replayed, with the error, left out of the time and the FLOPs."""

    rows: list[KernelRow] = field(default_factory=list)
    signatures: int = 0
    calls: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def kernel_bound(
    ops: list[DenseOp],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    probe: tuple[Callable[[], Any], float] | None = None,
    top: int | None = None,
) -> KernelBound:
    """Replay each unique signature of ``ops`` alone (median of ``repeats`` rounds after ``warmup``), in rounds with
    ``probe`` when given (see :func:`patseg.bench.measure.matmul_probe`), and sum median x calls."""
    fns: dict[str, Callable[[], Any]] = {}
    kept: list[tuple[str, DenseOp, int]] = []
    skipped: list[dict[str, Any]] = []
    # Recorded dtypes already reflect autocast (dispatch sees its casts), so the replay needs no autocast.
    with torch.inference_mode():
        for i, (op, calls) in enumerate(group_ops(ops)):
            try:
                fn = op.replay(seed=i)
                fn()  # a signature that fails is reported, never dropped silently
            except Exception as e:
                first_line = (str(e).strip().splitlines() or [""])[0]
                gflops = op.flops * calls / 1e9
                error = f"{type(e).__name__}: {first_line}"[:300]
                skipped.append({"op": op.name, "shapes": op.shapes(), "calls": calls, "gflops": gflops, "error": error})
                continue
            fns[str(i)] = fn
            kept.append((str(i), op, calls))
        probe_m: Measurement | None = None
        if probe is None:
            timed = measure_all(fns, device, warmup=warmup, repeats=repeats, memory=False, flops=False)
        else:
            timed, probe_m = measure_with_probe(
                fns, device, probe, warmup=warmup, repeats=repeats, memory=False, flops=False
            )
    rows = []
    for k, op, calls in kept:
        row = KernelRow(
            op.name, op.shapes(), calls, timed[k].median_ms, timed[k].median_ms * calls, op.flops * calls / 1e9
        )
        if probe_m is not None:
            rated = rate_against(Measurement(median_ms=row.ms, runs_ms=[], gflops=row.gflops), probe_m)
            row.gflops_per_s, row.of_probe = rated.gflops_per_s, rated.of_probe
        rows.append(row)
    rows.sort(key=lambda r: r.ms, reverse=True)
    bound = KernelBound(
        median_ms=sum(r.ms for r in rows),
        runs_ms=[round(sum(c * timed[k].runs_ms[j] for k, _, c in kept), 2) for j in range(repeats)],
        gflops=sum(r.gflops for r in rows),
        rows=rows[:top],
        signatures=len(rows),
        calls=sum(r.calls for r in rows),
        skipped=skipped,
    )
    if probe_m is not None:
        rate_against(bound, probe_m)  # fills in gflops_per_s and of_probe
    return bound
