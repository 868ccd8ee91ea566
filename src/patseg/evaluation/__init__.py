"""Metrics: semantic-segmentation scores (both mIoU rules), Table-I reports over seeds, and reconstruction FID."""
from patseg.evaluation.fid import inception_fid
from patseg.evaluation.report import (
    Stat,
    TableRow,
    aggregate,
    format_markdown,
    load_results,
    table_json,
    write_results,
)
from patseg.evaluation.rfid import RFIDResult, reconstruction_fid
from patseg.evaluation.sem_seg import SemSegEvaluator, metrics_from_confusion

__all__ = [
    "RFIDResult",
    "SemSegEvaluator",
    "Stat",
    "TableRow",
    "aggregate",
    "format_markdown",
    "inception_fid",
    "load_results",
    "metrics_from_confusion",
    "reconstruction_fid",
    "table_json",
    "write_results",
]
