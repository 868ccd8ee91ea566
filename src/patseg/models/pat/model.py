"""PAT: SAN's semantic branch plus feature pyramid tokenization and the shared decoder (§III of the paper).

``PAT.forward`` follows Fig. 4: CLIP taps -> pixel branch (stage tokenizers) and side ViT (whose global tokens are
updated by each stage's semantic branch) -> latent quantizer -> shared decoder (Eq. 3) -> mask head and
reconstruction head -> CLIP recognition of the global tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from patseg.losses import targets_from_semseg
from patseg.losses.pat_criterion import PatCriterion
from patseg.models.clip.backbone import ClipFeatures
from patseg.models.outputs import StepOutput
from patseg.models.pat.geometry import STAGES, PyramidGrids, pyramid_grids
from patseg.models.pat.pixel_branch import PixelBranch
from patseg.models.pat.pyramid_stage import PixelStageOutput
from patseg.models.pat.reconstruction_head import ReconstructionHead
from patseg.models.pat.shared_decoder import SharedDecoder
from patseg.models.pat.token_mixer import TokenMixer
from patseg.models.pat.vmf_quantizer import QuantizerOutput
from patseg.models.san.mask_decoder import MaskDecoder
from patseg.models.san.model import SAN, SegOutput, SegPrediction, prediction_thunk
from patseg.models.san.side_adapter import SideOutput


@dataclass(frozen=True)
class PatOptions:
    """What the forward reads from PatConfig beyond module sizes.

    pyramid_base, stage_scales: how the pyramid grids follow from the input size (see ``geometry``).
    decoder_stages: the stages the decoder consumes, coarse to fine.
    bias_source: "decoded" (CLIP attention bias from the decoded head) or "side" (from SAN's last side block).
    aux_sets: auxiliary prediction sets, "side<block>": SAN's side head at each block SAN supervises (may be empty).
    """

    pyramid_base: str
    stage_scales: tuple[int, ...]
    decoder_stages: tuple[str, ...]
    bias_source: str
    aux_sets: tuple[str, ...]


@dataclass
class PatOutput(SegOutput):
    """SegOutput plus PAT's tokens: ``quant`` maps early/mid/late/latent to the quantizer results (indices
    (B, h, w), z_q (B, 32, h, w), loss, perplexity); ``reconstruction`` is (B, 3, H, W) in [0, 1]."""

    quant: dict[str, QuantizerOutput] = field(default_factory=dict)
    reconstruction: Tensor | None = None
    grids: PyramidGrids | None = None


@dataclass(frozen=True)
class PyramidEncoding:
    """The encoder's prologue for one batch: everything computed before the side ViT.

    x: (B, 3, H, W) normalised image (the side ViT's and the pixel stem's input).
    feats: the CLIP taps and the recognition tokens of the image at ``resize_ratio``.
    grids: this input's pyramid grids.
    pixel: stage name -> the pixel branch's output (codes z_q_s (B, D, h_s, w_s), indices (B, h_s, w_s)).
    """

    x: Tensor
    feats: ClipFeatures
    grids: PyramidGrids
    pixel: dict[str, PixelStageOutput]


class PAT(SAN):
    """Feature Pyramid Tokenization on top of SAN.

    Arguments (beyond SAN's):
        pixel_branch: stem, stage tokenizers (with their semantic halves) and the latent quantizer.
        decoder: the shared decoder (with query cross-attention); when ``pixel_decoder`` is given it is the semantic
            decoder only and ``pixel_decoder`` (no queries) feeds the reconstruction (Table II "shared decoder").
        mask_head: a second SAN MLP mask decoder on the decoded features (256-d pixels).
        recon_head: transposed-convolution head to the full-resolution image.
        options: the forward's choices, see :class:`PatOptions`.
        query_maker: with ``unified_tokens`` the global tokens are made from the concatenated stage codebooks.
        criterion: PAT's loss (set losses, VQ, spatial alignment, reconstruction), in place of SAN's set loss.
    """

    criterion: PatCriterion  # type: ignore[assignment]  # PAT's loss replaces SAN's set loss; see training_losses

    def __init__(
        self,
        *,
        pixel_branch: PixelBranch,
        decoder: SharedDecoder,
        mask_head: MaskDecoder,
        recon_head: ReconstructionHead,
        options: PatOptions,
        pixel_decoder: SharedDecoder | None = None,
        query_maker: TokenMixer | None = None,
        **san_parts,
    ) -> None:
        super().__init__(**san_parts)
        self.pixel_branch = pixel_branch
        self.decoder = decoder
        self.pixel_decoder = pixel_decoder
        self.mask_head = mask_head
        self.recon_head = recon_head
        self.query_maker = query_maker
        self.options = options
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
        if not self.aux_blocks:  # no side set is supervised: SAN's side head gives the bias at most, never masks
            if self.options.bias_source == "side":
                self.mask_decoder.pix_mlp.requires_grad_(False)
            else:
                self.mask_decoder.requires_grad_(False)

    # ------------------------------------------------------------------ pieces of the forward
    def encode_pyramid(self, images: Tensor) -> PyramidEncoding:
        """Normalise, run CLIP's shallow blocks for the taps, derive the grids and tokenize the pixel pyramid.

        images: (B, 3, H, W) in [0, 1], H and W divisible by 32. Nothing here reads the global tokens.
        """
        x, clip_in = self.preprocess(images)
        feats = self.clip.extract(clip_in)
        grids = pyramid_grids(
            (images.shape[-2], images.shape[-1]),
            feats.grid,
            pyramid_base=self.options.pyramid_base,
            stage_scales=self.options.stage_scales,
        )
        return PyramidEncoding(
            x=x, feats=feats, grids=grids, pixel=self.pixel_branch.encode_stages(x, feats.taps, grids)
        )

    def run_side(self, enc: PyramidEncoding, record_blocks: tuple[int, ...]) -> SideOutput:
        """The side ViT with each stage's semantic branch hooked in after SAN's fusion."""
        return self.side(
            enc.x,
            enc.feats.taps,
            record_blocks=record_blocks,
            stage_hook=self.semantic_hook(),
            initial_queries=self.initial_queries(enc.x.shape[0]),
        )

    def initial_queries(self, batch: int) -> Tensor | None:
        """Unified tokens (Table II): global tokens from the concatenated stage codebooks, else SAN's own."""
        if self.query_maker is None:
            return None
        codes = torch.cat([stage.quantizer.codes() for stage in self.pixel_branch.pyramid_stages], 0)  # (sum K, D)
        return self.query_maker(codes).unsqueeze(0).expand(batch, -1, -1)

    def semantic_hook(self) -> Callable[[int, Tensor, Tensor, tuple[int, int]], Tensor]:
        """Stage hook for the side ViT: runs each stage's semantic branch right after SAN's fusion."""
        state: dict[str, Tensor | None] = {"prev": None}

        def hook(stage: int, queries: Tensor, patches: Tensor, grid: tuple[int, int]) -> Tensor:
            if stage > len(STAGES):
                return queries
            queries, state["prev"] = self.pixel_branch.pyramid_stages[stage - 1].semantic(
                queries, patches, state["prev"]
            )
            return queries

        return hook

    def decode(
        self, codes: dict[str, Tensor], latent_zq: Tensor, queries: Tensor | None = None, reconstruct: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Eq. (3).

        Arguments:
            codes: decoder stage name -> (B, D, h_s, w_s) quantized stage features z_q_s.
            latent_zq: (B, D, h, w) quantized latent at the side grid.
            queries: (B, Q, C_side) global tokens, or None to decode pixels only (the tokenizer).
        Returns:
            (decoded map (B, C_dec, h_final, w_final), updated queries or None, reconstruction or None).
        """
        z, queries = self.decoder(latent_zq, codes, queries)
        if not reconstruct:
            return z, queries, None
        pixels = z if self.pixel_decoder is None else self.pixel_decoder(latent_zq, codes)[0]
        return z, queries, self.recon_head(pixels)

    def encode(self, images: Tensor) -> dict[str, QuantizerOutput]:
        """The tokenizer's encoder: early/mid/late codes from CLIP and the pixel branch only; the latent codes
        from the side ViT (whose patches attend to the global tokens, so they depend on the semantic branch)."""
        enc = self.encode_pyramid(images)
        side = self.run_side(enc, (self.side_depth,))
        quant = {name: enc.pixel[name].quant for name in STAGES}
        quant["latent"] = self.pixel_branch.quantize_latent(side.patches[self.side_depth])
        return quant

    def forward(self, images: Tensor, class_embeddings: Tensor, *, reconstruct: bool | None = None) -> PatOutput:
        """images: (B, 3, H, W) in [0, 1], H and W divisible by 32; class_embeddings: (C, D).

        ``reconstruct`` defaults to ``self.training``: inference skips the reconstruction head.
        """
        enc = self.encode_pyramid(images)
        side = self.run_side(enc, self.record_blocks)
        last = self.side_depth
        latent = self.pixel_branch.quantize_latent(side.patches[last])

        codes = {name: enc.pixel[name].quant.z_q for name in self.options.decoder_stages}
        reconstruct = self.training if reconstruct is None else reconstruct
        z, queries, recon = self.decode(codes, latent.z_q, side.queries[last], reconstruct)

        assert queries is not None  # the decoder returns the queries it was given
        main = self.recognize_decoded(enc.feats, queries, z, side, class_embeddings)
        aux = {}
        if self.training:  # SAN's side heads are auxiliary losses only
            aux = {
                name: self.recognize(enc.feats, side.queries[b], side.patches[b], class_embeddings)
                for name, b in zip(self.options.aux_sets, self.aux_blocks)
            }
        quant = {name: enc.pixel[name].quant for name in STAGES}
        quant["latent"] = latent
        return PatOutput(main=main, aux=aux, quant=quant, reconstruction=recon, grids=enc.grids)

    def recognize_decoded(
        self, feats: ClipFeatures, queries: Tensor, z: Tensor, side: SideOutput, class_embeddings: Tensor
    ) -> SegPrediction:
        """Main prediction: masks from the decoded map; CLIP bias from it too, or from SAN's last side block."""
        if self.options.bias_source == "decoded":
            return self.recognize(feats, queries, z, class_embeddings, decoder=self.mask_head)
        last = self.side_depth
        side_out = self.mask_decoder(side.queries[last], side.patches[last])
        masks = self.mask_head(queries, z, with_bias=False).masks
        assert side_out.attn_bias is not None  # asked for by default
        return SegPrediction(masks=masks, logits=self.recognize_bias(feats, side_out.attn_bias, class_embeddings))

    # ------------------------------------------------------------------ training
    def prepare_training(self, lpips_vgg_weights: str | None = None) -> None:
        """Build the LPIPS network now from torchvision's VGG16 file ``lpips_vgg_weights``: a missing file
        (MissingFileError) stops training before the first step."""
        self.criterion.prepare(lpips_vgg_weights)

    def training_losses(
        self, images: Tensor, labels: Tensor, class_embeddings: Tensor, *, ignore_index: int = 255
    ) -> StepOutput:
        """PAT's weighted loss terms (see :class:`PatCriterion`), codebook perplexities and TensorBoard panels.

        images: (B, 3, H, W) in [0, 1]; labels: (B, H, W) class indices, ``ignore_index`` for void pixels.
        """
        out = self(images, class_embeddings)
        losses = self.criterion(
            images,
            targets_from_semseg(labels, ignore_index),
            main=out.main,
            aux=out.aux,
            vq_losses=[q.loss for q in out.quant.values()],
            stage_codes=[out.quant[name].z_q for name in STAGES],
            reconstruction=out.reconstruction,
        )
        stats = {f"perplexity_{k}": float(q.perplexity) for k, q in out.quant.items()}
        visuals = {
            "reconstruction": out.reconstruction.detach(),
            "prediction": prediction_thunk(out.main),
            **{f"tokens_{name}": out.quant[name].indices for name in STAGES},
        }
        return StepOutput(losses=losses, stats=stats, visuals=visuals)


def decoder_plan(
    stage_strides: dict[str, int], decoder_stages: tuple[str, ...], latent_stride: int
) -> list[tuple[str, float]]:
    """(name, factor from the previous grid) for each decoder stage; the first from the latent's grid."""
    plan, prev = [], latent_stride
    for name in decoder_stages:
        plan.append((name, prev / stage_strides[name]))
        prev = stage_strides[name]
    return plan
