"""vMFVQ: vector quantization with a von Mises-Fisher prior (PAT §III, Eq. 1 "VQ").

Why an own module and not vector-quantize-pytorch: PAT's codebooks are read twice, by the pixel branch's nearest-code
lookup and by the semantic branch's HSAttn, which uses the (normalised) codebook as attention queries; the
segmentation loss must therefore reach the codebook through HSAttn, so each codebook has to be an ``nn.Parameter``
in the optimizer. The library's cosine mode keeps the codebook as EMA-updated buffers (``use_cosine_sim`` asserts
against ``learnable_codebook``), defaults to the rotation-trick gradient instead of the straight-through estimator,
and adds a 45-option surface we would have to pin to reproduce the ViT-VQGAN recipe (N(0, 1) init, codebook loss +
0.25 commitment, plain straight-through). The whole recipe fits in one small class, so we write it.

Facts (ViT-VQGAN, Yu et al. 2021; read from thuanz123/enhancing-transformers
``enhancing/modules/stage1/quantizers.py``): codes and inputs are L2-normalised, so the nearest code by Euclidean
distance on the sphere, 2 - 2 cos, is the code with the largest cosine; the value passed on is the unit code; the loss
is ``mean((ê - sg ẑ)^2) + β mean((sg ê - ẑ)^2)``, β = 0.25. Under a vMF mixture with one shared concentration and a
uniform prior, that hard assignment is the maximum-responsibility component, hence "vMFVQ". ``vmf=False`` is the
Table II ablation: Euclidean nearest raw code (taming-transformers' ``VectorQuantizer2`` with ``legacy=False``);
its loss is scale-normalised so that the ablation changes the clustering, not the loss scale (:meth:`forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The nearest-code search holds a (chunk, K) similarity matrix; 2**24 float32 entries = 64 MiB per chunk.
_SEARCH_CHUNK_ELEMENTS = 1 << 24


@dataclass
class QuantizerOutput:
    """Result of :meth:`VMFQuantizer.forward`.

    z_q: ``(B, D, H, W)`` quantized features. The forward value is the chosen code (the unit code when ``vmf``);
        the gradient flows straight through to ``z`` (through the L2 normalisation when ``vmf``).
    indices: ``(B, H, W)`` int64 code index per position.
    loss: scalar, codebook term + ``commitment`` * commitment term, each a mean over elements; without ``vmf``
        both are taken on inputs and codes divided by the RMS norm of the chosen codes (see :meth:`forward`).
    perplexity: scalar, ``exp`` of the entropy of the code histogram of this batch (1 = one code used, K = uniform).
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    perplexity: Tensor


class VMFQuantizer(nn.Module):
    """Nearest-code quantizer over a learned codebook; cosine lookup on the unit sphere when ``vmf``.

    Arguments:
        num_codes: K, the codebook size (PAT: 128 / 64 / 32 per stage, 256 for the latent).
        code_dim: D, the code width (32, the factorised lookup dimension of ViT-VQGAN).
        vmf: True = cosine lookup and unit codes (vMFVQ); False = Euclidean lookup of raw codes (Table II ablation).
        commitment: β, the weight of the commitment term.

    The codebook is an ``nn.Parameter`` (K, D) initialised N(0, 1), learned by gradient only (no EMA): the VQ loss
    and every downstream use of :meth:`codes` (HSAttn queries) reach it. Lookups run in float32 (float64 if the
    module is float64) even under autocast, because a bf16 cosine cannot separate nearby codes.

    During training a non-persistent buffer ``code_hits`` (K,) counts how often each code was chosen since the last
    :meth:`reset_usage`; :meth:`dead_codes` reports the codes never chosen. Counts are per process (not reduced
    across data-parallel ranks).
    """

    code_hits: Tensor

    def __init__(self, *, num_codes: int, code_dim: int = 32, vmf: bool = True, commitment: float = 0.25) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f"num_codes and code_dim must be positive, got {num_codes} and {code_dim}")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.vmf = vmf
        self.commitment = commitment
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim))
        # Monitoring only: kept out of the state dict so checkpoints do not depend on how long usage was tracked.
        self.register_buffer("code_hits", torch.zeros(num_codes, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, code_dim={self.code_dim}, vmf={self.vmf}, commitment={self.commitment}"

    @property
    def _compute_dtype(self) -> torch.dtype:
        return torch.promote_types(self.codebook.dtype, torch.float32)

    def codes(self) -> Tensor:
        """The codebook as the rest of the model sees it: ``(K, D)``, unit rows when ``vmf``, raw otherwise.

        Differentiable with respect to :attr:`codebook`, so HSAttn queries built from it train the codebook.
        """
        codebook = self.codebook.to(self._compute_dtype)
        return F.normalize(codebook, dim=-1) if self.vmf else codebook

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for given indices: ``(B, H, W)`` int64 -> ``(B, D, H, W)``; equals the forward value of ``z_q``."""
        with torch.autocast(device_type=self.codebook.device.type, enabled=False):
            return self.codes()[indices].permute(0, 3, 1, 2)

    @torch.no_grad()
    def reset_usage(self) -> None:
        """Forget the code hits counted so far (e.g. at the start of each logging window)."""
        self.code_hits.zero_()

    def dead_codes(self) -> int:
        """Number of codes not chosen once since construction or the last :meth:`reset_usage`."""
        return int((self.code_hits == 0).sum().item())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize a feature map.

        Arguments:
            z: ``(B, D, H, W)`` continuous features, e.g. the PreQuant output.
        Returns:
            :class:`QuantizerOutput` with ``z_q`` ``(B, D, H, W)`` in the compute dtype (float32 unless the module is
            float64), ``indices`` ``(B, H, W)``, scalar ``loss`` and ``perplexity``.
        """
        if z.dim() != 4 or z.shape[1] != self.code_dim:
            raise ValueError(f"expected z of shape (B, {self.code_dim}, H, W), got {tuple(z.shape)}")
        batch, dim, height, width = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.to(self._compute_dtype).permute(0, 2, 3, 1).reshape(-1, dim)  # (N, D), N = B*H*W
            inputs = F.normalize(flat, dim=-1) if self.vmf else flat  # ẑ when vmf, z otherwise
            codebook = self.codes()  # (K, D)
            indices = self._nearest(inputs, codebook)  # (N,)
            chosen = codebook[indices]  # (N, D), ê: carries the codebook gradient of the loss

            # Straight-through written as sg(ê) + (ẑ - sg ẑ): the bracket is exactly zero, so the forward value is
            # the code bit for bit (lookup() equality), and the gradient reaches ẑ (hence z) unchanged.
            quantized = chosen.detach() + (inputs - inputs.detach())
            codebook_term = (chosen - inputs.detach()).pow(2).mean()
            commitment_term = (chosen.detach() - inputs).pow(2).mean()
            loss = codebook_term + self.commitment * commitment_term
            if not self.vmf:
                # Raw N(0, 1) codes have norm ~sqrt(D), so the plain loss would be ~D times the unit-sphere one and the
                # ablation would reweight L_VQ. Both terms are taken on inputs and codes divided by s, the RMS norm of
                # the chosen codes: those are the values z_q passes on (never-chosen codes get no VQ gradient and
                # may sit at any scale, so the whole codebook would be the wrong yardstick), and s = 1 on the sphere.
                # s is detached: growing the codes must not lower the loss. Lookup and z_q are untouched.
                loss = loss / chosen.detach().pow(2).sum(-1).mean().clamp_min(1e-12)

        # scatter_add rather than bincount: bincount reads the maximum index back to the host (a CUDA sync).
        counts = indices.new_zeros(self.num_codes).scatter_add_(0, indices, torch.ones_like(indices))
        if self.training:
            self.code_hits += counts
        z_q = quantized.reshape(batch, height, width, dim).permute(0, 3, 1, 2)
        return QuantizerOutput(
            z_q=z_q,
            indices=indices.reshape(batch, height, width),
            loss=loss,
            perplexity=_perplexity(counts),
        )

    @torch.no_grad()
    def _nearest(self, inputs: Tensor, codebook: Tensor) -> Tensor:
        """Index of the nearest code per row: ``(N, D)``, ``(K, D)`` -> ``(N,)`` int64, chunked over N.

        vmf: argmax of ẑ·ê (inputs and codes are unit rows). Euclidean: argmin of ||e||^2 - 2 z·e, which drops the
        per-row constant ||z||^2 of the squared distance.
        """
        chunk = max(1, _SEARCH_CHUNK_ELEMENTS // codebook.shape[0])
        code_sq = codebook.pow(2).sum(-1)  # (K,)
        parts = []
        for rows in inputs.split(chunk):
            scores = rows @ codebook.t()  # (n, K)
            if self.vmf:
                parts.append(scores.argmax(dim=-1))
            else:
                parts.append((code_sq - 2.0 * scores).argmin(dim=-1))
        return torch.cat(parts)


def _perplexity(counts: Tensor) -> Tensor:
    """``exp(-sum p log p)`` of a code histogram ``(K,)``; empty bins contribute 0."""
    probs = counts.double() / counts.sum().clamp_min(1)
    entropy = -torch.special.xlogy(probs, probs).sum()
    return entropy.exp().float()
