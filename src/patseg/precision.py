"""Opt-in reduced precision for inference: ``fp32`` (the default), ``bf16``, ``fp16`` and ``int8``.

- ``bf16`` / ``fp16``: the image forward runs under ``torch.autocast`` (matrix products and convolutions in the
  16-bit type, the rest in float32). Allowed on CUDA (bf16 where the GPU supports it) and on CPUs that compute the
  type natively: bfloat16 with AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension (ARM64); float16 only with
  AMX-FP16. PyTorch's own test (``torch.ops.mkldnn._is_mkldnn_fp16_supported``) also accepts AVX512-FP16, but on
  such a CPU (Sapphire Rapids, no AMX-FP16) float16 Linear layers measured slower than float32 and whole-model
  timings gave no consistent gain, so fp16 is refused there rather than run for no benefit.
- ``int8``: a copy of the model whose ``nn.Linear`` layers are dynamically quantized (int8 weights, activations
  quantized per call) with ``torch.ao.quantization.quantize_dynamic``; convolutions and attention products stay
  float32. CPU only: PyTorch's quantized kernels are CPU kernels.

A mode the device cannot run is refused by :func:`check_precision` with a :class:`UsageError`; nothing falls back
to float32 behind the caller's back. Post-processing (upsampling, scores, argmax) stays float32 in
:class:`patseg.predictor.Segmenter`.

torch is imported inside the functions: the command line lists :data:`PRECISIONS` as the choices of
``--precision`` while building its parsers, which must not import torch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar, cast

from patseg.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
DEFAULT_PRECISION = "fp32"
ModuleT = TypeVar("ModuleT", bound="nn.Module")


def _cpu_capabilities() -> dict[str, object]:
    """The CPU's instruction-set flags as torch detects them (``torch.cpu.get_capabilities``)."""
    import torch

    return dict(torch.cpu.get_capabilities())


def cpu_supports(mode: str) -> tuple[bool, str]:
    """(whether this CPU runs ``mode`` natively, why not: a message fragment, empty when it does)."""
    import torch

    caps = _cpu_capabilities()
    if mode == "bf16":
        if caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16") or caps.get("sve_bf16"):
            return True, ""
        return False, "this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16 on x86, BF16 on ARM64)"
    if mode == "fp16":
        if caps.get("amx_fp16"):
            return True, ""
        return False, (
            "this CPU has no AMX-FP16, and without it float16 matrix products measure slower than fp32 (AVX512-FP16 "
            "alone does not speed them up); use bf16 where the CPU has it"
        )
    if mode == "int8":
        if torch.backends.quantized.engine == "none":
            return False, "this PyTorch build has no quantized CPU engine (fbgemm, x86, onednn or qnnpack)"
        return True, ""
    return True, ""


def check_precision(mode: str, device: torch.device) -> None:
    """Raise UsageError unless ``device`` can run inference in ``mode`` natively (see the module docstring).

    int8 on a CUDA device is refused without querying CUDA, so the check runs on machines without a GPU.
    """
    if mode not in PRECISIONS:
        raise UsageError(f"unknown precision '{mode}': choose one of {', '.join(PRECISIONS)}")
    if mode == "fp32":
        return
    kind = device.type
    if kind == "cuda":
        if mode == "int8":
            raise UsageError(
                "precision int8 runs on the CPU only (dynamically quantized Linear layers have no CUDA kernels): "
                "use --device cpu, or bf16/fp16 on the GPU"
            )
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"precision {mode} on {device}: CUDA is not available on this machine")
        if mode == "bf16" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"precision bf16 on {device}: this GPU does not support bfloat16; use fp16")
        return
    if kind == "cpu":
        ok, why = cpu_supports(mode)
        if not ok:
            raise UsageError(f"precision {mode} on the CPU is refused: {why}")
        return
    raise UsageError(f"precision {mode} is supported on cpu and cuda devices, not on {kind}: use fp32 there")


def autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The context the image forward runs in: ``torch.autocast`` for bf16/fp16, nothing for fp32 and int8.

    Call :func:`check_precision` first: this only builds the context.
    """
    import torch

    if mode not in PRECISIONS:
        raise UsageError(f"unknown precision '{mode}': choose one of {', '.join(PRECISIONS)}")
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_quantization_deprecations() -> Iterator[None]:
    # torch.ao.quantization warns that it will move to torchao, and quantized tensor creation that it is deprecated;
    # both still work in the torch versions patseg supports, so the notices are silenced here, and only these.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)
        yield


def prepare_model(model: ModuleT, mode: str) -> ModuleT:
    """The module to run in ``mode``: for int8 a copy with every ``nn.Linear`` replaced by a dynamically quantized
    Linear (the caller's model is not changed; the rest of the module tree, attributes included, is kept); for the
    other modes ``model`` itself. The copy is an instance of ``model``'s own class, so its attributes and methods
    (``clip``, ``side``, ``encode_vocabulary``...) are all there."""
    import torch
    from torch import nn

    if mode not in PRECISIONS:
        raise UsageError(f"unknown precision '{mode}': choose one of {', '.join(PRECISIONS)}")
    if mode != "int8":
        return model
    with _quiet_quantization_deprecations():
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)
    return cast(ModuleT, quantized)
