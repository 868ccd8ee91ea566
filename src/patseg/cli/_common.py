"""Pieces shared by the sub-commands: the ``--set`` option, building a model from the options, help text that is
computed only when it is shown.

Nothing here imports torch at module level: every command's parser is built on each ``patseg`` call, ``--help``
included, and must stay cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

SET_HELP = (
    "model config keys, e.g. pat.vmf=false loss.vq_weight=1e-4 'pat.stage_scales=[4,4,4]' (values are YAML; repeatable)"
)


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``details`` (a callable returning text) is computed only when its help is shown.

    Help that lists library data (dataset layouts, metric names) would otherwise import the library every time any
    command's parser is built; the text is appended to the epilog.
    """

    def __init__(self, *args: Any, details: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._details = details

    def format_help(self) -> str:
        if self._details is not None:
            self.epilog = "\n\n".join(t for t in (self.epilog, self._details()) if t)
            self._details = None
        return super().format_help()


def add_set_option(parser: argparse.ArgumentParser, text: str = SET_HELP) -> None:
    """``--set KEY=VALUE ...``: repeatable; parsed later by :func:`patseg.config.parse_assignments`."""
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help=text)


def add_clip_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clip-weights",
        metavar="FILE",
        help="local open_clip checkpoint for the CLIP towers (needed with training checkpoints, "
        "which leave the frozen CLIP out)",
    )


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` assignments as dotted model-record keys with YAML values."""
    from patseg.config import parse_assignments

    return parse_assignments(args.set)


def build_from_args(args: argparse.Namespace, weights: str | None, *, overrides: dict[str, Any] | None = None) -> Any:
    """``build_model`` with the command's ``--preset``, ``--clip-weights`` and ``--set`` (or ``overrides``).

    Raises:
        UsageError: neither a preset nor a weights file (which records its preset) was given.
    """
    from patseg.build import build_model
    from patseg.errors import UsageError

    preset = args.preset
    if preset is None and weights is None:
        raise UsageError("give --preset, or --weights from a file that records its preset")
    return build_model(
        preset,
        weights=weights,
        clip_weights=args.clip_weights,
        overrides=model_overrides(args) if overrides is None else overrides,
    )


def require_pat(model: Any, what: str) -> None:
    """Raise UsageError unless ``model`` is PAT (SAN has no tokens, pyramid or reconstruction)."""
    from patseg.errors import UsageError
    from patseg.models.pat.model import PAT

    if not isinstance(model, PAT):
        raise UsageError(f"{what} needs a PAT model; '{model.config.name}' is SAN (no tokens)")


def pick_device(name: str | None) -> str:
    """``name``, or cuda when available, else cpu."""
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")
