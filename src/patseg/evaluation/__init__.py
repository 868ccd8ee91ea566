"""Metrics and the evaluation loop: semantic-segmentation scores (both mIoU rules, ``sem_seg``), Table-I reports
over seeds (``report``), reconstruction FID (``fid``, ``rfid``) and zero-shot evaluation of a model (``loop``)."""

from importlib import import_module
from typing import Any

# Lazy, as in ``patseg/__init__.py``: ``patseg report --help`` reads the metric names without importing torch.
_EXPORTS = {
    "inception_fid": "patseg.evaluation.fid",
    "Stat": "patseg.evaluation.report",
    "TableRow": "patseg.evaluation.report",
    "aggregate": "patseg.evaluation.report",
    "format_markdown": "patseg.evaluation.report",
    "load_results": "patseg.evaluation.report",
    "table_json": "patseg.evaluation.report",
    "write_results": "patseg.evaluation.report",
    "RFIDResult": "patseg.evaluation.rfid",
    "reconstruction_fid": "patseg.evaluation.rfid",
    "SemSegEvaluator": "patseg.evaluation.sem_seg",
    "metrics_from_confusion": "patseg.evaluation.sem_seg",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'patseg.evaluation' has no attribute {name!r}")
