"""PAT composed: decoupled stage codes, decoding without global tokens, a tiny model overfits one batch
(segmentation and reconstruction), and every trainable tensor — each codebook included — receives a gradient."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
import torch
from torch import nn

from naive import toy_batch, unit_rows
from patseg.build import build_model
from patseg.errors import MissingFileError
from patseg.losses.reconstruction import VGG16_FILE, ReconstructionLoss
from patseg.models.pat.geometry import STAGES
from patseg.models.pat.model import PAT
from patseg.tokenizer import PyramidTokenizer

SEG_TERMS = ("loss_ce", "loss_mask", "loss_dice")
REC_TERMS = ("loss_l1", "loss_l2", "loss_lpips")


def tiny_pat(**overrides) -> PAT:
    torch.manual_seed(0)
    return build_model("pat_tiny", overrides=overrides)


def perturb(params: Iterable[nn.Parameter], scale: float = 0.5) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * scale)


def semantic_half(model: PAT) -> list[nn.Parameter]:
    """Everything the global tokens are made of or pass through: the side ViT, each stage's semantic branch
    (K/V projection, TokenMixers, global cross-attention), the decoder's token updates (and its extra layers under
    the ``tokens`` reading, where they are token layers) and both mask heads."""
    params = list(model.side.parameters()) + list(model.mask_decoder.parameters()) + [model.bg_embed]
    params += list(model.mask_head.parameters())
    for stage in model.pixel_branch.stages:
        for part in (stage.kv, stage.mixer, stage.mixer_g, stage.global_attn):
            params += list(part.parameters()) if part is not None else []
    for stage in model.decoder.stages:
        params += list(stage.tokens.parameters())
    if model.decoder.reading == "tokens":
        params += list(model.decoder.extra.parameters())
    return params


def codebooks(model: PAT) -> dict[str, nn.Parameter]:
    books = {name: stage.quantizer.codebook for name, stage in zip(STAGES, model.pixel_branch.stages)}
    books["latent"] = model.pixel_branch.latent_quantizer.codebook
    return books


READINGS = ("tokens", "pixels")


@pytest.mark.parametrize("reading", READINGS)
def test_stage_codes_do_not_depend_on_global_tokens(reading: str) -> None:
    model = tiny_pat(**{"pat.decoder": reading}).eval()
    images, _ = toy_batch()
    with torch.no_grad():
        before = model.encode(images)
        perturb(semantic_half(model))
        after = model.encode(images)
    for name in STAGES:
        assert torch.equal(before[name].indices, after[name].indices), name
        assert torch.equal(before[name].z_q, after[name].z_q), name
    # the latent codes come from the side ViT, so they do move (the test would be vacuous otherwise)
    assert not torch.equal(before["latent"].indices, after["latent"].indices)


@pytest.mark.parametrize("reading", READINGS)
def test_no_gradient_path_from_global_tokens_to_stage_codes(reading: str) -> None:
    model = tiny_pat(**{"pat.decoder": reading}).train()
    images, _ = toy_batch()
    out = model(images, unit_rows(4, model.clip.out_dim))
    stage_codes = sum(out.quant[name].z_q.sum() for name in STAGES)
    semantic = semantic_half(model)
    grads = torch.autograd.grad(stage_codes, semantic, allow_unused=True)
    assert all(g is None for g in grads)
    # ...while the latent codes do depend on the side ViT (straight-through into its patch tokens)
    latent_grad = torch.autograd.grad(out.quant["latent"].z_q.sum(), model.side.query_embed)[0]
    assert float(latent_grad.abs().sum()) > 0


@pytest.mark.parametrize("reading", READINGS)
def test_decoding_codes_needs_no_global_tokens(reading: str) -> None:
    model = tiny_pat(**{"pat.decoder": reading}).eval()
    images, _ = toy_batch()
    emb = unit_rows(4, model.clip.out_dim)
    with torch.no_grad():
        forward = model(images, emb, reconstruct=True)
    tokenizer = PyramidTokenizer(model)
    pyramid = tokenizer.encode(images)
    for name in (*STAGES, "latent"):
        assert torch.equal(pyramid.codes[name], forward.quant[name].indices)
    decoded = tokenizer.decode(pyramid)
    torch.testing.assert_close(decoded, forward.reconstruction, rtol=1e-5, atol=1e-6)
    perturb(semantic_half(model))  # the global tokens, their cross-attentions and the heads play no part
    torch.testing.assert_close(tokenizer.decode(pyramid), decoded, rtol=0, atol=0)
    perturb(model.decoder.stages[0].spade.parameters())  # the pixel path does
    assert not torch.allclose(tokenizer.decode(pyramid), decoded, atol=1e-4)


def test_eval_skips_reconstruction_and_auxiliary_sets() -> None:
    model = tiny_pat()
    images, _ = toy_batch()
    emb = unit_rows(4, model.clip.out_dim)
    with torch.no_grad():
        train_out = model.train()(images, emb)
        eval_out = model.eval()(images, emb)
    assert train_out.reconstruction.shape == (2, 3, 64, 64) and set(train_out.aux) == {"side3", "side4"}
    assert eval_out.reconstruction is None and eval_out.aux == {}
    torch.testing.assert_close(eval_out.main.logits, train_out.main.logits)
    r = train_out.reconstruction
    assert float(r.min()) >= 0 and float(r.max()) <= 1


def test_tiny_pat_grids_and_non_square_input() -> None:
    """64x96 input, pat_tiny (CLIP grid H/16): base grid = side grid H/16, stages H/4, H/8, H/16, latent H/16,
    masks H/4; under pyramid_base clip the base grid is H/32 and everything but the latent halves."""
    model = tiny_pat().eval()
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = model(images, unit_rows(3, model.clip.out_dim), reconstruct=True)
    assert out.grids.stages == {"early": (16, 24), "mid": (8, 12), "late": (4, 6)}
    assert {k: tuple(q.indices.shape[-2:]) for k, q in out.quant.items()} == {
        "early": (16, 24),
        "mid": (8, 12),
        "late": (4, 6),
        "latent": (4, 6),
    }
    assert out.main.masks.shape == (1, 20, 16, 24) and out.main.logits.shape == (1, 20, 4)
    assert out.reconstruction.shape == (1, 3, 64, 96)
    model = tiny_pat(**{"pat.pyramid_base": "clip"}).eval()
    with torch.no_grad():
        out = model(images, unit_rows(3, model.clip.out_dim), reconstruct=True)
    assert {k: tuple(q.indices.shape[-2:]) for k, q in out.quant.items()} == {
        "early": (8, 12),
        "mid": (4, 6),
        "late": (2, 3),
        "latent": (4, 6),
    }
    assert out.main.masks.shape == (1, 20, 8, 12) and out.reconstruction.shape == (1, 3, 64, 96)


def test_tiny_pat_overfits_one_batch() -> None:
    """AdamW lr 1e-3, 40 steps, two 64x64 images: the set loss and the reconstruction loss both fall clearly.
    CRF points are cut to 64 (an 8x8 early grid has 64 pixels) to keep the step fast."""
    model = tiny_pat(**{"loss.crf_points": 64}).train()
    model.prepare_training()
    images, labels = toy_batch()
    emb = unit_rows(4, model.clip.out_dim)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    seg, rec = [], []
    for _ in range(40):
        out = model.training_losses(images, labels, emb)
        assert {"loss_vq", "loss_spatial", "loss_l1", "loss_l2"} <= set(out.losses)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        seg.append(float(sum(v.detach() for k, v in out.losses.items() if k.startswith(SEG_TERMS))))
        rec.append(float(sum(v.detach() for k, v in out.losses.items() if k in REC_TERMS)))
    print(
        f"\nPAT tiny: set loss {seg[0]:.2f} -> {seg[20]:.2f} -> {seg[-1]:.2f}; "
        f"reconstruction {rec[0]:.4f} -> {rec[20]:.4f} -> {rec[-1]:.4f}"
    )
    assert seg[-1] < 0.5 * seg[0]
    assert rec[-1] < 0.6 * rec[0]


def test_prepare_training_builds_lpips_from_the_given_file_only(tmp_path) -> None:
    """The VGG16 file is an argument of prepare_training, not of the architecture; LPIPS stays out of the state."""
    model = tiny_pat(**{"loss.perceptual_weight": 0.1})
    keys = list(model.state_dict())
    missing = tmp_path / VGG16_FILE
    with pytest.raises(MissingFileError, match=re.escape(str(missing))):
        model.prepare_training(str(missing))
    with pytest.raises(MissingFileError, match="lpips_vgg_weights"):
        model.prepare_training()
    model.criterion.reconstruction = ReconstructionLoss(perceptual_weight=0.1, lpips_size=32, random_trunk=True)
    model.prepare_training()
    assert model.criterion.reconstruction.lpips_net is not None and list(model.state_dict()) == keys
    images, labels = toy_batch()
    losses = model.train().training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses
    assert float(losses["loss_lpips"].detach()) > 0


def test_gradients_reach_every_trainable_parameter() -> None:
    model = tiny_pat().train()
    images, labels = toy_batch()
    model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert p.grad is None and name.startswith(("clip.", "text.")), name


def test_codebooks_learn_through_hsattn_and_through_the_vq_loss() -> None:
    """Stage codebooks get the segmentation gradient only through HSAttn (z_q is straight-through); the VQ loss
    reaches all four; spatial alignment reaches none (it stops at the straight-through codes). Reconstruction reaches
    the stage codebooks too, but only through the latent: side patches attend to the global tokens, which HSAttn
    built from the codebooks."""
    model = tiny_pat().train()
    images, labels = toy_batch()
    losses = model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses
    books = codebooks(model)
    seg = sum(v for k, v in losses.items() if k.startswith(SEG_TERMS))

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        got = torch.autograd.grad(loss, list(books.values()), allow_unused=True, retain_graph=True)
        return dict(zip(books, got))

    for name, g in grads(seg).items():
        if name == "latent":
            assert g is None
        else:
            assert g is not None and float(g.abs().sum()) > 0, name
    for name, g in grads(losses["loss_vq"]).items():
        assert g is not None and float(g.abs().sum()) > 0, name
    assert all(g is None for g in grads(losses["loss_spatial"]).values())
    assert grads(losses["loss_l2"])["latent"] is None


def test_hsattn_path_is_what_carries_the_segmentation_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut HSAttn's view of the codebook (detach codes() in the semantic branch): the seg gradient disappears."""
    model = tiny_pat().train()
    images, labels = toy_batch()
    for stage in model.pixel_branch.stages:
        codes = stage.quantizer.codes
        monkeypatch.setattr(stage.quantizer, "codes", lambda codes=codes: codes().detach())
    losses = model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses
    seg = sum(v for k, v in losses.items() if k.startswith(SEG_TERMS))
    books = [stage.quantizer.codebook for stage in model.pixel_branch.stages]
    assert all(g is None for g in torch.autograd.grad(seg, books, allow_unused=True))
