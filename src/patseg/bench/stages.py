"""Where inference time goes: the parts of SAN and PAT inference, each measured alone on real inputs.

:class:`StageRecorder` runs one real ``Segmenter.predict`` with the model's stage methods wrapped, keeps every
call's inputs, and :func:`stage_breakdown` then replays each stage alone on those inputs. A stage that runs inside
another (PAT's semantic branch inside the side ViT) is subtracted from its parent, so the stage times add up to the
work done; what the end-to-end time has beyond that sum is glue (reshapes, Python, small ops). The same ``predict``'s
dense ops are also replayed one by one (:mod:`patseg.bench.kernels`): the time its kernels alone would take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from patseg.bench.kernels import KernelBound, kernel_bound, record_dense_ops
from patseg.bench.measure import Measurement, measure_with_probe, precision, rate_against
from patseg.predictor import Segmenter


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


KERNEL_ROWS = 8  # op signatures of the kernel bound kept in a breakdown, most expensive first


@dataclass
class Breakdown:
    """end_to_end: ``Segmenter.predict``; scores: ``Segmenter.scores`` (every class's map); stages: each part alone,
    nested parts subtracted from their parent; glue_ratio: end-to-end time / sum of the stage times (1.0 = the parts
    are all there is); probe: the matrix-product probe timed in the same rounds, against which every entry is
    rated; kernel_bound: predict's dense ops replayed alone (see :mod:`patseg.bench.kernels`), rated against a probe
    timed in its own rounds; over_kernel_bound: end-to-end time / kernel bound (1.0 = nothing but dense kernels),
    each time first scaled by the speed of the probe timed in its rounds (:func:`probe_scaled_ratio`)."""

    end_to_end: Measurement
    scores: Measurement
    stages: dict[str, Measurement]
    stage_sum_ms: float
    glue_ratio: float
    probe: Measurement
    nesting: dict[str, str] = field(default_factory=dict)
    kernel_bound: Optional[KernelBound] = None
    over_kernel_bound: Optional[float] = None


def probe_scaled_ratio(a: Measurement, b: Measurement) -> Optional[float]:
    """a's time over b's, each in units of the probe timed in its own rounds (time x the probe's GFLOP/s).

    ``a`` and ``b`` were timed in different rounds, and on a shared machine the speed of the whole machine drifts
    between them (the probe alone moved 1.5x between runs minutes apart); scaling each by its own probe cancels
    that drift, as the rates against the probe do."""
    if b.median_ms <= 0:
        return None
    if not (a.gflops_per_s and a.of_probe and b.gflops_per_s and b.of_probe):
        return a.median_ms / b.median_ms  # no probe rates (no FLOPs): the plain ratio
    return (a.median_ms * a.gflops_per_s / a.of_probe) / (b.median_ms * b.gflops_per_s / b.of_probe)


def _gflops(m: Measurement) -> float:
    """The FLOP count of ``m``; set here because ``measure_all`` counts FLOPs unless told not to."""
    assert m.gflops is not None
    return m.gflops


def stage_breakdown(
    seg: Segmenter,
    image: np.ndarray,
    device: torch.device,
    probe: tuple[Callable[[], Any], float],
    *,
    warmup: int,
    repeats: int,
    mode: str = "fp32",
    kernel_rows: Optional[int] = KERNEL_ROWS,
) -> Breakdown:
    """End-to-end ``predict`` and ``scores``, every stage replayed alone (exclusive times, memory and FLOPs) and
    predict's kernel bound (the ``kernel_rows`` most expensive op signatures kept), rated against ``probe`` (see
    :func:`patseg.bench.measure.matmul_probe`), in precision ``mode``."""

    def predict() -> None:
        with precision(device, mode):
            seg.predict(image)

    def scores() -> None:
        with precision(device, mode):
            seg.scores(image)

    recorder = StageRecorder(stage_targets(seg))
    with recorder, precision(device, mode):
        seg.predict(image)

    def replay(stage: str) -> Callable[[], None]:
        run = recorder.replay(stage)

        def timed() -> None:
            with torch.inference_mode(), precision(device, mode):
                run()

        return timed

    fns = {"end_to_end": predict, "scores": scores, **{stage: replay(stage) for stage in recorder.stages()}}
    inclusive, probe_m = measure_with_probe(fns, device, probe, warmup=warmup, repeats=repeats)
    end_to_end, scores_m = inclusive.pop("end_to_end"), inclusive.pop("scores")
    nesting = {s: p for s in inclusive if (p := recorder.parent(s)) is not None}
    stages = {}
    for stage, m in inclusive.items():
        children = [inclusive[c] for c, p in nesting.items() if p == stage]
        exclusive = Measurement(
            median_ms=m.median_ms - sum(c.median_ms for c in children),
            runs_ms=m.runs_ms,
            peak_mb=m.peak_mb,
            gflops=_gflops(m) - sum(_gflops(c) for c in children),
        )
        stages[stage] = rate_against(exclusive, probe_m)
    total = sum(m.median_ms for m in stages.values())
    bound = kernel_bound(
        record_dense_ops(predict), device, warmup=warmup, repeats=repeats, probe=probe, top=kernel_rows
    )
    return Breakdown(
        end_to_end=end_to_end,
        scores=scores_m,
        stages=stages,
        stage_sum_ms=total,
        glue_ratio=end_to_end.median_ms / total,
        probe=probe_m,
        nesting=nesting,
        kernel_bound=bound,
        over_kernel_bound=probe_scaled_ratio(end_to_end, bound),
    )
