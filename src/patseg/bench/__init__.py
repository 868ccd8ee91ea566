"""Measuring where inference and training time goes: latency, peak memory and FLOPs, per stage and end to end.

Everything is measured in one process, side by side, with warm-up runs and the median of several timed runs:

- :mod:`patseg.bench.measure`: timing, peak memory and FLOP counting of one callable or several side by side.
- :mod:`patseg.bench.stages`: the per-stage breakdown of ``Segmenter.predict`` (record once, replay each part).
- :mod:`patseg.bench.kernels`: the kernel bound, a call's dense ops (matmuls, convolutions, attention) replayed alone.
- :mod:`patseg.bench.suite`: what ``patseg bench`` runs (:class:`BenchPlan`, :func:`run_suite`) and the targets
  it checks (:func:`check_targets`).
"""

from patseg.bench.kernels import DenseOp, KernelBound, KernelRow, TensorSpec, kernel_bound, record_dense_ops
from patseg.bench.measure import (
    Measurement,
    count_flops,
    cpu_peak_supported,
    matmul_probe,
    measure,
    measure_all,
    measure_with_probe,
    peak_memory_mb,
    precision,
    rate_against,
    synchronize,
    time_runs,
)
from patseg.bench.stages import Breakdown, StageRecorder, stage_breakdown, stage_targets
from patseg.bench.suite import (
    BenchPlan,
    as_dict,
    cached_vocabulary,
    check_targets,
    clip_encoder,
    environment,
    make_segmenter,
    random_image,
    run_suite,
    train_step,
)

__all__ = [
    "BenchPlan",
    "Breakdown",
    "DenseOp",
    "KernelBound",
    "KernelRow",
    "Measurement",
    "StageRecorder",
    "TensorSpec",
    "as_dict",
    "cached_vocabulary",
    "check_targets",
    "clip_encoder",
    "count_flops",
    "cpu_peak_supported",
    "environment",
    "kernel_bound",
    "make_segmenter",
    "matmul_probe",
    "measure",
    "measure_all",
    "measure_with_probe",
    "peak_memory_mb",
    "precision",
    "random_image",
    "rate_against",
    "record_dense_ops",
    "run_suite",
    "stage_breakdown",
    "stage_targets",
    "synchronize",
    "time_runs",
    "train_step",
]
