"""Metrics: semantic-segmentation scores (both mIoU rules), Table-I reports over seeds, and reconstruction FID."""
from patseg.evaluation.fid import (
    FIDInceptionV3,
    FeatureMoments,
    GaussianStats,
    ReconstructionFID,
    RFIDResult,
    frechet_distance,
    load_fid_inception,
)
from patseg.evaluation.report import (
    Stat,
    TableRow,
    aggregate,
    format_markdown,
    load_results,
    table_json,
    write_results,
)
from patseg.evaluation.sem_seg import SemSegEvaluator, metrics_from_confusion

__all__ = [
    "FIDInceptionV3",
    "FeatureMoments",
    "GaussianStats",
    "RFIDResult",
    "ReconstructionFID",
    "SemSegEvaluator",
    "Stat",
    "TableRow",
    "aggregate",
    "format_markdown",
    "frechet_distance",
    "load_fid_inception",
    "load_results",
    "metrics_from_confusion",
    "table_json",
    "write_results",
]
