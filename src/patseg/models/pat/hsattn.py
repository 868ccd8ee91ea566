"""HSAttn: hyperspherical attention, one learned vMF mean-shift step (PAT §III, Eq. 1).

    HSAttn(Q, K, V) = g(softmax(κ g(Q) g(K)^T) V),    g = L2 normalisation of each row, κ = 30 fixed.

Read as clustering: the queries are cluster centroids on the unit sphere (in PAT, a stage codebook), the keys and
values are the features being clustered; each centroid moves to the re-normalised vMF-weighted mean of the values,
with weights softmax over the keys of κ·cos(centroid, key). That is one mean-shift step of a vMF kernel density; the
softmax only rescales each row, which the final g() removes anyway.

Facts from MSMFormer (YoungSean/UnseenObjectsWithMeanShift, ``meanshiftformer/modeling/transformer_decoder/
attention_util.py``): q and k are normalised with eps 1e-12, v is not normalised, the softmax is over the keys
(not over the queries as in slot attention), the output is re-normalised, and κ is a constant (30), not learned.
PAT uses a single head in the 32-d code space with no output projection, so Eq. (1) holds exactly; the projection
around it (K = V = a 240 -> 32 linear of the side tokens) belongs to the caller, ``PyramidStage``. HSAttn itself has
no parameter, hence a function rather than a module. With unit q and k the logits lie in [-κ, κ], so the softmax
cannot overflow even in half precision.

``vmf=False`` is the Table II ablation "No vMF meanshift": the plain scaled dot-product attention of Eq. (1)'s third
line, softmax(Q K^T / sqrt(d)) V, with no normalisation anywhere.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def hs_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kappa: float = 30.0,
    vmf: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Hyperspherical attention (Eq. 1), or plain attention when ``vmf`` is False.

    Arguments:
        q: ``(B, Nq, D)`` queries (PAT: the stage codebook, possibly mixed with the previous stage's tokens).
        k: ``(B, Nk, D)`` keys.
        v: ``(B, Nk, Dv)`` values.
        kappa: vMF concentration κ; the softmax temperature is 1/κ on cosines. Ignored when ``vmf`` is False.
        vmf: True = Eq. (1) HSAttn; False = softmax(q k^T / sqrt(D)) v.
        mask: optional mask broadcastable to ``(B, Nq, Nk)`` with the ``scaled_dot_product_attention`` meaning:
            bool (True = the key takes part) or float (added to the logits). A query row whose keys are all masked
            gives NaN, as softmax over an empty set is undefined.
    Returns:
        ``(B, Nq, Dv)``; unit-norm rows when ``vmf``.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query and key widths differ: {q.shape[-1]} vs {k.shape[-1]}")
    if vmf and kappa <= 0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    if not vmf:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    q_unit = F.normalize(q, dim=-1)
    k_unit = F.normalize(k, dim=-1)
    # SDPA computes softmax(scale * q k^T + mask) v; with unit q, k and scale = κ that is the inside of Eq. (1).
    mean = F.scaled_dot_product_attention(q_unit, k_unit, v, attn_mask=mask, scale=kappa)
    return F.normalize(mean, dim=-1)
