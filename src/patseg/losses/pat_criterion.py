"""PAT's training objective (PAT §III): every loss weight and switch of PAT in one module.

    L = L_set(main) + sum_aux L_set(aux) + vq_weight L_VQ + spatial_weight L_spatial + rec_weight L_rec

- L_set: SAN's Hungarian-matched set loss (:class:`SetCriterion`), each set matched on its own with one shared mask
  count; the main set comes from the decoded features, the auxiliary sets from SAN's side heads.
- L_VQ: the sum of the four quantizers' losses (early, mid, late, latent; each already holds its commitment term).
- L_spatial: the mean over the three stages of ``crf_weight CRF + tv_weight TV`` of the stage codes z_q_s against
  the image (:func:`spatial_alignment_loss`); left out entirely when ``spatial_alignment`` is False (Table II).
  Raw (non-unit) codes are first divided by their RMS norm (:func:`rms_norm`).
- L_rec: :class:`ReconstructionLoss` (L1 + L2 + LPIPS, with its inner weights) on the reconstruction.

The model hands over plain tensors and prediction sets, so this layer never imports the models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from patseg.losses.matcher import SemSegTarget
from patseg.losses.reconstruction import ReconstructionLoss
from patseg.losses.set_criterion import MaskSet, SetCriterion
from patseg.losses.spatial import spatial_alignment_loss

__all__ = ["PatCriterion", "rms_norm"]


class PatCriterion(nn.Module):
    """PAT's weighted loss terms for one training step.

    Arguments:
        set_loss: SAN's set loss (it holds the class / mask / dice weights).
        reconstruction: L1 + L2 + LPIPS with their inner weights; its LPIPS network stays out of ``state_dict()``.
        vq_weight: weight of the summed quantizer losses (``loss_vq``).
        spatial_weight: weight of the spatial-alignment mean (``loss_spatial``).
        crf_weight, tv_weight: inner weights of CRF and TV in each stage's spatial term (a row of
            ``SPATIAL_INNER_WEIGHTS``); a term with weight 0 is not computed.
        crf_points: pixels the CRF term samples per stage.
        rec_weight: weight applied to every reconstruction term (``loss_l1``, ``loss_l2``, ``loss_lpips``).
        spatial_alignment: False drops ``loss_spatial`` (Table II ablation).
        unit_codes: True when the stage codes are unit vectors (vMF). False (Table II "no vMF") divides each
            image's codes by their RMS norm over positions before CRF and TV, so the spatial term keeps the unit
            codes' scale and the ablation changes the clustering only.
    """

    def __init__(
        self,
        *,
        set_loss: SetCriterion,
        reconstruction: ReconstructionLoss,
        vq_weight: float = 0.1,
        spatial_weight: float = 0.1,
        crf_weight: float = 1.0,
        tv_weight: float = 1.0,
        crf_points: int = 1000,
        rec_weight: float = 1.0,
        spatial_alignment: bool = True,
        unit_codes: bool = True,
    ) -> None:
        super().__init__()
        self.set_loss = set_loss
        self.reconstruction = reconstruction
        self.vq_weight, self.spatial_weight, self.rec_weight = vq_weight, spatial_weight, rec_weight
        self.crf_weight, self.tv_weight, self.crf_points = crf_weight, tv_weight, crf_points
        self.spatial_alignment, self.unit_codes = spatial_alignment, unit_codes

    def extra_repr(self) -> str:
        return (
            f"vq_weight={self.vq_weight}, spatial_weight={self.spatial_weight}, rec_weight={self.rec_weight}, "
            f"crf_weight={self.crf_weight}, tv_weight={self.tv_weight}, crf_points={self.crf_points}, "
            f"spatial_alignment={self.spatial_alignment}, unit_codes={self.unit_codes}"
        )

    def prepare(self, lpips_vgg_weights: str | None = None) -> None:
        """Build LPIPS from torchvision's VGG16 file now; raises MissingFileError when it is needed and missing."""
        self.reconstruction.build(lpips_vgg_weights)

    def spatial(self, images: Tensor, stage_codes: Sequence[Tensor]) -> Tensor:
        """Unweighted L_spatial: mean over the stages of CRF + TV (inner weights applied).

        Arguments:
            images: (B, 3, H, W) input images in [0, 1].
            stage_codes: per stage, (B, D, h_s, w_s) quantized codes z_q_s (scale-normalised unless ``unit_codes``).
        Returns:
            scalar.
        """
        terms = [
            spatial_alignment_loss(
                images,
                codes if self.unit_codes else codes / rms_norm(codes),
                crf_weight=self.crf_weight,
                tv_weight=self.tv_weight,
                num_points=self.crf_points,
            ).total
            for codes in stage_codes
        ]
        return torch.stack(terms).mean()

    def forward(
        self,
        images: Tensor,
        targets: list[SemSegTarget],
        *,
        main: MaskSet,
        aux: Mapping[str, MaskSet],
        vq_losses: Sequence[Tensor],
        stage_codes: Sequence[Tensor],
        reconstruction: Tensor,
    ) -> dict[str, Tensor]:
        """Every weighted term of PAT's loss.

        Arguments:
            images: (B, 3, H, W) input images in [0, 1], the reconstruction and spatial-alignment target.
            targets: B ground truths of the set losses.
            main, aux: the main prediction set and the auxiliary sets by name (see :meth:`SetCriterion.sets`).
            vq_losses: scalar loss of each quantizer, summed in the given order.
            stage_codes: (B, D, h_s, w_s) z_q_s of each pyramid stage (early, mid, late).
            reconstruction: (B, 3, H, W) reconstructed images in [0, 1].
        Returns:
            the set terms (``loss_ce``, ``loss_mask``, ``loss_dice`` and their ``_<aux name>`` copies), ``loss_vq``,
            ``loss_spatial`` (only with ``spatial_alignment``), ``loss_l1``, ``loss_l2``, ``loss_lpips``; each a
            scalar already multiplied by its weight.
        """
        losses = self.set_loss.sets(main, aux, targets)
        losses["loss_vq"] = self.vq_weight * cast(Tensor, sum(vq_losses))  # a Tensor: one loss per quantizer
        if self.spatial_alignment:
            losses["loss_spatial"] = self.spatial_weight * self.spatial(images, stage_codes)
        rec = self.reconstruction(reconstruction, images)
        losses.update({k: self.rec_weight * v for k, v in rec.items()})
        return losses


def rms_norm(codes: Tensor) -> Tensor:
    """Per image, the detached RMS of the code norms over positions: (B, D, h, w) -> (B, 1, 1, 1).

    It is 1 for unit codes; dividing raw codes by it gives them the unit codes' mean squared norm, the quantity CRF
    and TV scale with. Detached, so that shrinking the codes cannot lower the loss through it.
    """
    return codes.detach().pow(2).sum(1).mean((1, 2)).clamp_min(1e-12).sqrt().view(-1, 1, 1, 1)
