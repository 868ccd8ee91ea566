"""Pieces shared by the sub-commands: the ``--set`` option, building a model from the options, help text that is
computed only when it is shown.

Nothing here imports torch at module level: every command's parser is built on each ``patseg`` call, ``--help``
included, and must stay cheap.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from typing import Any

from patseg.precision import DEFAULT_PRECISION, PRECISIONS

logger = logging.getLogger(__name__)

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


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: without it a command refuses to replace the output files of an earlier run."""
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output files of an earlier run (refused by default)"
    )


PRECISION_HELP = (
    "arithmetic of the image forward (default fp32): bf16 or fp16 run it under autocast (on CUDA; on a CPU only "
    "with native support: AVX512-BF16/AMX-BF16 for bf16, AMX-FP16 for fp16), int8 quantizes the Linear layers "
    "dynamically (CPU only). A mode the device cannot run natively is refused, never run in fp32 instead; text "
    "embeddings and post-processing stay fp32"
)


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision {fp32,bf16,fp16,int8}``: checked against the device by :func:`patseg.precision.check_precision`
    when the Segmenter is built (or earlier by the command)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help=PRECISION_HELP)


def in_process_group(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command's body; when torchrun launched this process (RANK set) the body joins the process group, and
    the group is left here afterwards, whatever the body's outcome."""
    from patseg.distributed import cleanup, detect

    joins = detect().enabled
    try:
        return body(args)
    finally:
        if joins:
            cleanup()


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


def build_from_args(
    args: argparse.Namespace,
    weights: str | None,
    *,
    overrides: dict[str, Any] | None = None,
    warn_untrained: bool = False,
) -> Any:
    """``build_model`` with the command's ``--preset``, ``--clip-weights`` and ``--set`` (or ``overrides``); warns
    about random parts (:func:`warn_random_parts`; the head too with ``warn_untrained``).

    Raises:
        UsageError: neither a preset nor a weights file (which records its preset) was given.
    """
    from patseg.build import build_model
    from patseg.errors import UsageError

    preset = args.preset
    if preset is None and weights is None:
        raise UsageError("give --preset, or --weights from a file that records its preset")
    model = build_model(
        preset,
        weights=weights,
        clip_weights=args.clip_weights,
        overrides=model_overrides(args) if overrides is None else overrides,
    )
    warn_random_parts(model, weights, args.clip_weights, head=warn_untrained)
    return model


def require_pat(model: Any, what: str) -> None:
    """Raise UsageError unless ``model`` is PAT (SAN has no tokens, pyramid or reconstruction)."""
    from patseg.errors import UsageError
    from patseg.models.pat.model import PAT

    if not isinstance(model, PAT):
        raise UsageError(f"{what} needs a PAT model; '{model.config.name}' is SAN (no tokens)")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= ``minimum`` (argparse names the option in its message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"  # argparse shows the name when the conversion fails otherwise
    return parse


positive_int = int_at_least(1)

DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)"
_DEVICE_RE = re.compile(r"(cpu|mps|cuda(:\d+)?)\Z")


def device_name(text: str) -> str:
    """An argparse ``type=`` for ``--device``: the spelling only (availability is checked by :func:`pick_device`)."""
    name = text.strip().lower()
    if not _DEVICE_RE.match(name):
        raise argparse.ArgumentTypeError(f"unknown device '{text}' (use cpu, cuda, cuda:N or mps)")
    return name


def pick_device(name: str | None) -> str:
    """``name``, or cuda when available, else cpu.

    Raises:
        UsageError: ``name`` is a device this machine does not have (naming ``--device`` and what it has).
    """
    import torch

    from patseg.errors import UsageError

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = device_name(name)
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no usable CUDA device"
            raise UsageError(f"--device {name}: this machine has {have}; use --device cpu or leave it out")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine; use --device cpu or leave it out")
    return name


def is_shipped_clip(model: Any) -> bool:
    """The model's CLIP is one of patseg's own small configs (tiny, mini), not a real CLIP that needs weights."""
    from patseg.resources import CLIP_CONFIG_DIR

    return (CLIP_CONFIG_DIR / f"{model.config.clip.model_name}.json").is_file()


def warn_random_parts(model: Any, weights: str | None, clip_weights: str | None, *, head: bool = False) -> None:
    """One warning per part of ``model`` left random by the options, so that its meaningless output is explained.

    The CLIP towers are random when a real CLIP gets neither ``--clip-weights`` nor a weights file (a weights file
    without CLIP tensors is refused by ``build_model``); with ``head``, the trained part is random without
    ``--weights``.
    """
    if weights is None and head:
        logger.warning(
            "no --weights: '%s' has an untrained (random) head, so the output means nothing; give a file from "
            "training or `patseg convert-san`",
            model.config.name,
        )
    if weights is None and clip_weights is None and not is_shipped_clip(model):
        logger.warning(
            "no --clip-weights: the CLIP towers of '%s' (%s) are random; give the local open_clip checkpoint",
            model.config.name,
            model.config.clip.model_name,
        )
