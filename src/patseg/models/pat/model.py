"""PAT: SAN's semantic branch plus feature pyramid tokenization and the shared decoder (§III of the paper).

``PAT.forward`` follows Fig. 4: CLIP taps -> pixel branch (stage tokenizers) and side ViT (whose global tokens are
updated by each stage's semantic branch) -> latent quantizer -> shared decoder (Eq. 3) -> mask head and
reconstruction head -> CLIP recognition of the global tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from patseg.losses.reconstruction import ReconstructionLoss
from patseg.losses.spatial import spatial_alignment_loss
from patseg.models.pat.geometry import STAGES, PyramidGrids, pyramid_grids
from patseg.models.san.mask_decoder import MaskDecoder
from patseg.models.outputs import StepOutput
from patseg.models.pat.pixel_branch import PixelBranch
from patseg.models.pat.reconstruction_head import ReconstructionHead
from patseg.models.san.model import SAN, SegOutput, SegPrediction, prediction_thunk
from patseg.models.pat.shared_decoder import SharedDecoder
from patseg.models.pat.token_mixer import TokenMixer
from patseg.models.pat.vmf_quantizer import QuantizerOutput
from patseg.losses import targets_from_semseg


@dataclass(frozen=True)
class PatOptions:
    """Size-independent facts the forward needs (all from PatConfig)."""

    pyramid_base: str = "clip"
    stage_scales: tuple[int, int, int] = (4, 2, 1)
    decoder_stages: tuple[str, ...] = ("late", "mid", "early")
    bias_source: str = "decoded"
    aux_sets: tuple[str, ...] = ("side8",)
    shared_decoder: bool = True


@dataclass(frozen=True)
class PatLossWeights:
    vq: float = 0.1
    spatial: float = 0.1
    crf: float = 1.0
    tv: float = 1.0
    crf_points: int = 1000
    reconstruction: float = 1.0
    spatial_alignment: bool = True


@dataclass
class PatOutput(SegOutput):
    """SegOutput plus PAT's tokens: ``quant`` maps early/mid/late/latent to the quantizer results (indices
    (B, h, w), z_q (B, 32, h, w), loss, perplexity); ``reconstruction`` is (B, 3, H, W) in [0, 1]."""

    quant: dict[str, QuantizerOutput] = field(default_factory=dict)
    reconstruction: Optional[Tensor] = None
    grids: Optional[PyramidGrids] = None


class PAT(SAN):
    """Feature Pyramid Tokenization on top of SAN.

    Arguments (beyond SAN's):
        pixel_branch: stem, stage tokenizers (with their semantic halves) and the latent quantizer.
        decoder: the shared decoder (with query cross-attention); when ``options.shared_decoder`` is False it is
            the semantic decoder and ``pixel_decoder`` (no queries) feeds the reconstruction.
        mask_head: a second SAN MLP mask decoder on the decoded features (256-d pixels).
        recon_head: transposed-convolution head to the full-resolution image.
        reconstruction_loss: L1 + L2 + LPIPS.
        query_maker: with ``unified_tokens`` the global tokens are made from the concatenated stage codebooks.
    """

    def __init__(self, *, pixel_branch: PixelBranch, decoder: SharedDecoder, mask_head: MaskDecoder,
                 recon_head: ReconstructionHead, reconstruction_loss: ReconstructionLoss, options: PatOptions,
                 loss_weights: PatLossWeights, pixel_decoder: Optional[SharedDecoder] = None,
                 query_maker: Optional[TokenMixer] = None, **san_parts) -> None:
        super().__init__(**san_parts)
        self.pixel_branch = pixel_branch
        self.decoder = decoder
        self.pixel_decoder = pixel_decoder
        self.mask_head = mask_head
        self.recon_head = recon_head
        self.reconstruction_loss = reconstruction_loss
        self.query_maker = query_maker
        self.options = options
        self.loss_weights = loss_weights
        last = self.side.depth
        aux_blocks = [int(name.removeprefix("side")) for name in options.aux_sets]
        self.aux_blocks = tuple(aux_blocks)
        self.record_blocks = tuple(sorted(set(aux_blocks + [last])))
        self.side_depth = last
        self._freeze_unread()

    def _freeze_unread(self) -> None:
        """Freeze the parameters an ablation leaves unread: they would never get a gradient, which stalls
        DistributedDataParallel. They sit in modules shared with SAN (side ViT, mask decoder), so they stay built."""
        if self.query_maker is not None:  # unified tokens: the initial queries come from the codebooks
            self.side.query_embed.requires_grad_(False)
        if self.options.bias_source == "side":  # the decoded head gives masks only; the bias is SAN's side head's
            self.mask_head.attn_mlp.requires_grad_(False)
            self.mask_head.bias_scaling.requires_grad_(False)

    # ------------------------------------------------------------------ pieces of the forward
    def grids_for(self, images: Tensor, clip_grid: tuple[int, int]) -> PyramidGrids:
        return pyramid_grids(tuple(images.shape[-2:]), clip_grid, pyramid_base=self.options.pyramid_base,
                             stage_scales=self.options.stage_scales)

    def initial_queries(self, batch: int) -> Optional[Tensor]:
        """Unified tokens (Table II): global tokens from the concatenated stage codebooks, else SAN's own."""
        if self.query_maker is None:
            return None
        codes = torch.cat([stage.quantizer.codes() for stage in self.pixel_branch.stages], 0)  # (sum K, D)
        return self.query_maker(codes).unsqueeze(0).expand(batch, -1, -1)

    def semantic_hook(self):
        """Stage hook for the side ViT: runs each stage's semantic branch right after SAN's fusion."""
        state: dict[str, Optional[Tensor]] = {"prev": None}

        def hook(stage: int, queries: Tensor, patches: Tensor, grid: tuple[int, int]) -> Tensor:
            if stage > len(STAGES):
                return queries
            queries, state["prev"] = self.pixel_branch.stages[stage - 1].semantic(queries, patches, state["prev"])
            return queries

        return hook

    def decode(self, codes: dict[str, Tensor], latent_zq: Tensor, queries: Optional[Tensor] = None,
               reconstruct: bool = True) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Eq. (3).

        Arguments:
            codes: decoder stage name -> (B, D, h_s, w_s) quantized stage features z_q_s.
            latent_zq: (B, D, h, w) quantized latent at the side grid.
            queries: (B, Q, C_side) global tokens, or None to decode pixels only (the tokenizer).
        Returns:
            (decoded map (B, C_dec, h_final, w_final), updated queries or None, reconstruction or None).
        """
        first = self.options.decoder_stages[0]
        z0 = self.pixel_branch.decoder_input(latent_zq, tuple(codes[first].shape[-2:]))
        z, queries = self.decoder(z0, codes, queries)
        if not reconstruct:
            return z, queries, None
        pixels = z if self.pixel_decoder is None else self.pixel_decoder(z0, codes)[0]
        return z, queries, self.recon_head(pixels)

    def encode(self, images: Tensor) -> dict[str, QuantizerOutput]:
        """The tokenizer's encoder: early/mid/late codes from CLIP and the pixel branch only; the latent codes
        from the side ViT (whose patches attend to the global tokens, so they depend on the semantic branch)."""
        x, clip_in = self.preprocess(images)
        feats = self.clip.extract(clip_in)
        pixel = self.pixel_branch.encode_stages(x, feats.taps, self.grids_for(images, feats.grid))
        side = self.side(x, feats.taps, record_blocks=(self.side_depth,), stage_hook=self.semantic_hook(),
                         initial_queries=self.initial_queries(images.shape[0]))
        quant = {name: pixel[name].quant for name in STAGES}
        quant["latent"] = self.pixel_branch.quantize_latent(side.patches[self.side_depth])
        return quant

    def forward(self, images: Tensor, class_embeddings: Tensor, *, reconstruct: Optional[bool] = None) -> PatOutput:
        """images: (B, 3, H, W) in [0, 1], H and W divisible by 32; class_embeddings: (C, D).

        ``reconstruct`` defaults to ``self.training``: inference skips the reconstruction head.
        """
        x, clip_in = self.preprocess(images)
        feats = self.clip.extract(clip_in)
        grids = self.grids_for(images, feats.grid)

        pixel = self.pixel_branch.encode_stages(x, feats.taps, grids)
        side = self.side(x, feats.taps, record_blocks=self.record_blocks, stage_hook=self.semantic_hook(),
                         initial_queries=self.initial_queries(images.shape[0]))
        last = self.side_depth
        latent = self.pixel_branch.quantize_latent(side.patches[last])

        codes = {name: pixel[name].quant.z_q for name in self.options.decoder_stages}
        reconstruct = self.training if reconstruct is None else reconstruct
        z, queries, recon = self.decode(codes, latent.z_q, side.queries[last], reconstruct)

        main = self.recognize_decoded(feats, queries, z, side, class_embeddings)
        aux = {}
        if self.training:  # SAN's side heads are auxiliary losses only
            aux = {name: self.recognize(feats, side.queries[b], side.patches[b], class_embeddings)
                   for name, b in zip(self.options.aux_sets, self.aux_blocks)}
        quant = {name: pixel[name].quant for name in STAGES}
        quant["latent"] = latent
        return PatOutput(main=main, aux=aux, quant=quant, reconstruction=recon, grids=grids)

    def recognize_decoded(self, feats, queries: Tensor, z: Tensor, side, class_embeddings: Tensor):
        """Main prediction: masks from the decoded map; CLIP bias from it too, or from SAN's last side block."""
        if self.options.bias_source == "decoded":
            return self.recognize(feats, queries, z, class_embeddings, decoder=self.mask_head)
        last = self.side_depth
        side_out = self.mask_decoder(side.queries[last], side.patches[last])
        masks = self.mask_head(queries, z).masks
        bias = F.adaptive_max_pool2d(side_out.attn_bias.flatten(0, 1), feats.grid)
        bias = bias.view(*side_out.attn_bias.shape[:3], *feats.grid)
        return SegPrediction(masks=masks, logits=self.classify(self.clip.recognize(feats, bias), class_embeddings))

    # ------------------------------------------------------------------ losses
    def prepare_training(self) -> None:
        """Build the LPIPS network now: a missing VGG16 file stops training before the first step."""
        self.reconstruction_loss.build()

    def training_losses(self, images: Tensor, labels: Tensor, class_embeddings: Tensor, *,
                        ignore_index: int = 255) -> StepOutput:
        out = self(images, class_embeddings)
        losses = self.set_losses(out, targets_from_semseg(labels, ignore_index))
        w = self.loss_weights
        losses["loss_vq"] = w.vq * sum(q.loss for q in out.quant.values())
        if w.spatial_alignment:
            losses["loss_spatial"] = w.spatial * self.spatial_loss(images, out)
        rec = self.reconstruction_loss(out.reconstruction, images)
        losses.update({k: w.reconstruction * v for k, v in rec.items()})
        stats = {f"perplexity_{k}": float(q.perplexity) for k, q in out.quant.items()}
        visuals = {"reconstruction": out.reconstruction.detach(), "prediction": prediction_thunk(out.main),
                   **{f"tokens_{name}": out.quant[name].indices for name in STAGES}}
        return StepOutput(losses=losses, stats=stats, visuals=visuals)

    def spatial_loss(self, images: Tensor, out: PatOutput) -> Tensor:
        """Mean over the stages of CRF + TV on z_q_s against the image at the stage grid."""
        w = self.loss_weights
        terms = [spatial_alignment_loss(images, out.quant[name].z_q, crf_weight=w.crf, tv_weight=w.tv,
                                        num_points=w.crf_points).total for name in STAGES]
        return torch.stack(terms).mean()


def decoder_plan(stage_strides: dict[str, int], decoder_stages: tuple[str, ...]) -> list[tuple[str, float]]:
    """(name, factor from the previous grid) for each decoder stage; the first stage starts at factor 1."""
    plan, prev = [], None
    for name in decoder_stages:
        plan.append((name, 1.0 if prev is None else prev / stage_strides[name]))
        prev = stage_strides[name]
    return plan


def stage_order_ok(decoder_stages: tuple[str, ...]) -> bool:
    """Decoder stages must run coarse to fine (late, mid, early), any subset."""
    order = [s for s in ("late", "mid", "early") if s in decoder_stages]
    return list(decoder_stages) == order and len(set(decoder_stages)) == len(decoder_stages)

