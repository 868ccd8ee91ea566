"""Every Table II ablation switch of PatConfig changes what it claims to change (docs/design.md), and no
switch leaves a trainable parameter without a gradient (DistributedDataParallel stalls on one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from naive import attention, nearest_code, toy_batch, unit_rows
from patseg.build import build_model
from patseg.config import parse_assignments
from patseg.errors import ConfigError
from patseg.models.pat.geometry import final_stride
from patseg.models.pat.model import PAT
from patseg.models.pat.shared_decoder import SharedDecoder
from patseg.models.pat.token_mixer import TokenMixer

ABLATIONS = {
    "default": {},
    "vmf": {"pat.vmf": False},
    "scales_444": {"pat.stage_scales": [4, 4, 4]},
    "scales_111": {"pat.stage_scales": [1, 1, 1]},
    "no_spatial": {"pat.spatial_alignment": False},
    "no_token_mixer": {"pat.token_mixer": False},
    "no_pixel_residual": {"pat.pixel_residual": False},
    "unified_tokens": {"pat.unified_tokens": True},
    "two_decoders": {"pat.shared_decoder": False},
    "late_mid": {"pat.decoder_stages": ["late", "mid"]},
    "late": {"pat.decoder_stages": ["late"]},
    "bias_side": {"pat.bias_source": "side"},
    "aux_side4": {"side.deep_supervision": [4]},
    "no_aux": {"side.deep_supervision": []},
    "no_aux_bias_side": {"side.deep_supervision": [], "pat.bias_source": "side"},
    "pyramid_side": {"pat.pyramid_base": "side"},
}


SET_TERMS = ("loss_ce", "loss_mask", "loss_dice")


def tiny_pat(**overrides) -> PAT:
    torch.manual_seed(0)
    return build_model("pat_tiny", overrides=overrides)


def perturb(module: nn.Module | nn.Parameter, scale: float = 0.5) -> None:
    params = [module] if isinstance(module, nn.Parameter) else module.parameters()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * scale)


def code_costs(z: torch.Tensor, codebook: torch.Tensor, *, vmf: bool) -> torch.Tensor:
    """(N, K) float64 lookup cost: minus the cosine (vmf) or the squared Euclidean distance."""
    z, codebook = z.double(), codebook.double()
    if vmf:
        return -(z / z.norm(dim=-1, keepdim=True)) @ (codebook / codebook.norm(dim=-1, keepdim=True)).t()
    return torch.cdist(z, codebook).pow(2)


def run(model: PAT, **kwargs):
    images, _ = toy_batch()
    with torch.no_grad():
        return model(images, unit_rows(4, model.clip.out_dim), **kwargs)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    model = tiny_pat(**ABLATIONS[name]).train()
    images, labels = toy_batch()
    model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).total.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert dead == []


# ---------------------------------------------------------------------------------------------- vmf
@pytest.mark.parametrize("vmf", [True, False])
def test_semantic_branch_attention_matches_naive(vmf: bool) -> None:
    """ê_mid = HSAttn(e_mid + TokenMixer(ê_early), KV(z), KV(z)) with vmf; plain softmax(QK^T/sqrt(d))V without."""
    model = tiny_pat(**{"pat.vmf": vmf})
    stage = model.pixel_branch.stages[1]
    queries, patches, prev = torch.randn(2, 20, 64), torch.randn(2, 16, 64), torch.randn(2, 32, 16)
    with torch.no_grad():
        _, tokens = stage.semantic(queries, patches, prev)
        e = stage.quantizer.codes() + stage.mixer(prev)  # (B, K, D)
        kv = stage.kv(patches)
    for b in range(2):
        expected = attention(e[b], kv[b], kv[b], kappa=30.0, vmf=vmf)
        torch.testing.assert_close(tokens[b].double(), expected, rtol=1e-4, atol=1e-5)
    norms = tokens.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == vmf


@pytest.mark.parametrize("vmf", [True, False])
def test_quantizers_follow_the_vmf_switch(vmf: bool) -> None:
    """vmf: unit codes, cosine lookup; Euclidean VQ: raw codes (N(0, 1) rows of norm ~4), nearest by distance."""
    model = tiny_pat(**{"pat.vmf": vmf}).eval()
    quantizers = [s.quantizer for s in model.pixel_branch.stages] + [model.pixel_branch.latent_quantizer]
    assert all(q.vmf == vmf for q in quantizers)
    inputs = {}
    model.pixel_branch.stages[0].pre_quant.register_forward_hook(lambda _m, _i, out: inputs.setdefault("z", out))
    out = run(model)
    early = model.pixel_branch.stages[0].quantizer
    norms = early.codes().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms)) == vmf
    z = inputs["z"].permute(0, 2, 3, 1).reshape(-1, early.code_dim)
    got = out.quant["early"].indices.flatten()
    best = nearest_code(z, early.codebook.detach(), vmf=vmf)
    # float32 may break a near-tie the other way: the chosen code must then be as near as the best, in float64
    cost = code_costs(z, early.codebook.detach(), vmf=vmf)
    rows = torch.arange(len(got))
    torch.testing.assert_close(cost[rows, got], cost[rows, best], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.quant["early"].z_q, early.lookup(out.quant["early"].indices), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- stage scales
@pytest.mark.parametrize("scales, grid, head_depth, grid_at_640", [((4, 4, 4), 16, 2, 160), ((1, 1, 1), 4, 4, 40)])
def test_equal_stage_scales(scales, grid, head_depth, grid_at_640) -> None:
    model = tiny_pat(**{"pat.stage_scales": list(scales)}).train()
    out = run(model)
    assert out.grids.stages == {"early": (grid, grid), "mid": (grid, grid), "late": (grid, grid)}
    assert {k: tuple(q.indices.shape[-2:]) for k, q in out.quant.items() if k != "latent"} == {
        "early": (grid, grid),
        "mid": (grid, grid),
        "late": (grid, grid),
    }
    assert out.main.masks.shape[-2:] == (grid, grid)  # the mask grid this ablation reports
    assert 640 // final_stride("side", scales, ("late", "mid", "early")) == grid_at_640
    assert model.recon_head.num_upsamples == head_depth and out.reconstruction.shape == (2, 3, 64, 64)
    for stage in model.pixel_branch.stages[1:]:  # Down between equal scales: one stride-1 3x3 conv
        assert stage.down.factor == 1 and stage.down.convs[0].stride == (1, 1)


# ---------------------------------------------------------------------------------------------- spatial alignment
def test_spatial_alignment_off_drops_only_the_spatial_term() -> None:
    full = tiny_pat().train()
    ablated = tiny_pat(**{"pat.spatial_alignment": False}).train()
    ablated.load_state_dict(full.state_dict())
    images, labels = toy_batch()
    emb = unit_rows(4, full.clip.out_dim)
    torch.manual_seed(1)
    with_spatial = full.training_losses(images, labels, emb).losses
    torch.manual_seed(1)
    without = ablated.training_losses(images, labels, emb).losses
    assert float(with_spatial["loss_spatial"].detach()) > 0
    assert set(with_spatial) - set(without) == {"loss_spatial"}
    for key, value in without.items():
        torch.testing.assert_close(value, with_spatial[key], msg=key)


# ---------------------------------------------------------------------------------------------- token mixer
def test_no_token_mixer() -> None:
    """No TokenMixer modules; the global tokens read z_s by CrossAttn(q, z_s, z_s) alone, whatever the codebook."""
    model = tiny_pat(**{"pat.token_mixer": False})
    assert not any(isinstance(m, TokenMixer) for m in model.modules())
    queries, patches = torch.randn(2, 20, 64), torch.randn(2, 16, 64)
    for stage in model.pixel_branch.stages:
        assert stage.kv is None  # ê_s would have no consumer ("no contribution to the segmentation")
        with torch.no_grad():
            new_q, tokens = stage.semantic(queries, patches, torch.randn(2, 32, 16))
            torch.testing.assert_close(new_q, stage.global_attn(queries, patches), rtol=0, atol=0)
            perturb(stage.quantizer)
            torch.testing.assert_close(stage.semantic(queries, patches, None)[0], new_q, rtol=0, atol=0)
        assert tokens is None
    # with the mixers the mid and late stages do read the previous stage's tokens and their own codebook
    default = tiny_pat()
    mid = default.pixel_branch.stages[1]
    with torch.no_grad():
        a, _ = mid.semantic(queries, patches, torch.randn(2, 32, 16))
        b, _ = mid.semantic(queries, patches, torch.randn(2, 32, 16))
    assert not torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------------------------------------- pixel residual
def test_no_pixel_residual() -> None:
    """u_s = Up(Proj(f_s)): no stem, no Down, and each stage's codes are a function of its CLIP tap alone."""
    model = tiny_pat(**{"pat.pixel_residual": False}).eval()
    assert model.pixel_branch.stem is None and all(s.down is None for s in model.pixel_branch.stages)
    tap = torch.randn(1, 64, 4, 4)
    stage = model.pixel_branch.stages[0]
    with torch.no_grad():
        got = stage.pixel(tap, None, (16, 16))
        expected = stage.quantizer(stage.pre_quant(stage.resample(stage.proj(tap), size=(16, 16))))
    assert got.residual is None
    torch.testing.assert_close(got.quant.z_q, expected.z_q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pixel_residual"):
        stage.pixel(tap, torch.randn(1, 64, 16, 16), (16, 16))
    # contrast: with the residual, the stem's weights move the stage codes
    default = tiny_pat().eval()
    before = run(default).quant
    perturb(default.pixel_branch.stem)
    after = run(default).quant
    assert not torch.equal(before["early"].z_q, after["early"].z_q)


# ---------------------------------------------------------------------------------------------- unified tokens
def test_unified_tokens_make_the_queries_from_the_codebooks() -> None:
    model = tiny_pat(**{"pat.unified_tokens": True}).eval()
    seen = []
    model.side.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["initial_queries"]), with_kwargs=True
    )
    out = run(model)
    codes = torch.cat([s.quantizer.codes() for s in model.pixel_branch.stages], 0)  # (32 + 16 + 8, 16)
    with torch.no_grad():
        expected = model.query_maker(codes)
    assert expected.shape == (20, 64)
    torch.testing.assert_close(seen[-1], expected.expand(2, -1, -1), rtol=0, atol=0)
    assert not model.side.query_embed.requires_grad  # SAN's own query embedding is not read
    perturb(model.side.query_embed)
    torch.testing.assert_close(run(model).main.logits, out.main.logits, rtol=0, atol=0)
    perturb(model.pixel_branch.stages[0].quantizer)  # changing a codebook changes the queries
    assert not torch.allclose(model.initial_queries(2), seen[-1], atol=1e-4)
    assert not torch.allclose(run(model).main.logits, out.main.logits, atol=1e-4)
    # the default model starts from SAN's query embedding
    default = tiny_pat()
    assert default.query_maker is None and default.initial_queries(2) is None


# ---------------------------------------------------------------------------------------------- decoders
@pytest.mark.parametrize("reading", ["tokens", "pixels"])
def test_two_decoders_share_nothing(reading: str) -> None:
    """Separate Decoding: each decoder owns its PostQuant, resamplers and SPADEs; they share only the codes."""
    model = tiny_pat(**{"pat.shared_decoder": False, "pat.decoder": reading}).eval()
    assert isinstance(model.pixel_decoder, SharedDecoder) and isinstance(model.decoder, SharedDecoder)
    assert all(s.tokens is None for s in model.pixel_decoder.stages)
    assert all(s.tokens is not None for s in model.decoder.stages)
    semantic = {id(p) for p in model.decoder.parameters()}
    assert semantic.isdisjoint(id(p) for p in model.pixel_decoder.parameters())
    assert not any(n.startswith("pixel_branch.latent_post") for n, _ in model.named_parameters())
    out = run(model, reconstruct=True)
    perturb(model.decoder.post_quant)  # the semantic decoder's own entry: masks move, pixels do not
    entry = run(model, reconstruct=True)
    torch.testing.assert_close(entry.reconstruction, out.reconstruction, rtol=0, atol=0)
    assert not torch.allclose(entry.main.masks, out.main.masks, atol=1e-4)
    perturb(model.decoder)  # the semantic decoder (with query cross-attention): masks move, pixels do not
    moved = run(model, reconstruct=True)
    torch.testing.assert_close(moved.reconstruction, out.reconstruction, rtol=0, atol=0)
    assert not torch.allclose(moved.main.masks, out.main.masks, atol=1e-4)
    perturb(model.pixel_decoder)  # the pixel decoder: pixels move, masks do not
    again = run(model, reconstruct=True)
    torch.testing.assert_close(again.main.masks, moved.main.masks, rtol=0, atol=0)
    assert not torch.allclose(again.reconstruction, moved.reconstruction, atol=1e-4)


@pytest.mark.parametrize("reading", ["tokens", "pixels"])
def test_shared_decoder_feeds_both_heads(reading: str) -> None:
    model = tiny_pat(**{"pat.decoder": reading}).eval()
    assert model.pixel_decoder is None
    out = run(model, reconstruct=True)
    for stage in model.decoder.stages:  # the global-token updates write only to the queries
        perturb(stage.tokens)
    crossed = run(model, reconstruct=True)
    torch.testing.assert_close(crossed.reconstruction, out.reconstruction, rtol=0, atol=0)
    assert not torch.allclose(crossed.main.masks, out.main.masks, atol=1e-4)
    perturb(model.decoder.stages[0].spade)  # the decoded map itself feeds both heads
    moved = run(model, reconstruct=True)
    assert not torch.allclose(moved.reconstruction, crossed.reconstruction, atol=1e-4)
    assert not torch.allclose(moved.main.masks, crossed.main.masks, atol=1e-4)


@pytest.mark.parametrize(
    "kept, grid, head_depth",
    [(("late", "mid", "early"), 16, 2), (("late", "mid"), 8, 3), (("late",), 4, 4), ((), 4, 4)],
)
def test_decoder_stage_subsets(kept, grid, head_depth) -> None:
    model = tiny_pat(**{"pat.decoder_stages": list(kept)}).train()
    assert model.decoder.names == list(kept)
    out = run(model)
    assert out.main.masks.shape[-2:] == (grid, grid)  # final grid = finest stage kept
    assert model.recon_head.num_upsamples == head_depth and out.reconstruction.shape == (2, 3, 64, 64)
    assert set(out.quant) == {"early", "mid", "late", "latent"}  # every stage is still tokenized


def test_decoding_from_the_latent_alone() -> None:
    """Table II's last FPN row: no decoder stage; the decoded map is PostQuant(z_latent) at the side grid."""
    model = tiny_pat(**{"pat.decoder_stages": []}).eval()
    assert len(model.decoder.stages) == 0 and len(model.decoder.extra) == 2
    latent = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        z, _, recon = model.decode({}, latent, queries=None, reconstruct=True)
        expected = model.decoder.post_quant(latent)
        torch.testing.assert_close(z, expected, rtol=0, atol=0)
        torch.testing.assert_close(recon, model.recon_head(expected), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [["mid", "late"], ["late", "late"], ["early", "mid"]])
def test_bad_decoder_stages_raise(bad) -> None:
    with pytest.raises(ValueError, match="decoder_stages"):
        tiny_pat(**{"pat.decoder_stages": bad})


# ---------------------------------------------------------------------------------------------- heads and sets
@pytest.mark.parametrize("source", ["decoded", "side"])
def test_bias_source(source: str) -> None:
    """The CLIP attention bias comes from the decoded head, or from SAN's side head at the last block."""
    model = tiny_pat(**{"pat.bias_source": source}).eval()
    out = run(model)
    assert all(p.requires_grad == (source == "decoded") for p in model.mask_head.attn_mlp.parameters())
    perturb(model.mask_head.attn_mlp)
    after_head = run(model)
    perturb(model.mask_decoder.attn_mlp)
    after_side = run(model)
    torch.testing.assert_close(after_head.main.masks, out.main.masks, rtol=0, atol=0)  # masks: decoded head
    head_moved = not torch.allclose(after_head.main.logits, out.main.logits, atol=1e-4)
    side_moved = not torch.allclose(after_side.main.logits, after_head.main.logits, atol=1e-4)
    assert (head_moved, side_moved) == ((True, False) if source == "decoded" else (False, True))


def test_bad_bias_source_raises() -> None:
    with pytest.raises(ValueError, match="bias_source"):
        tiny_pat(**{"pat.bias_source": "clip"})


def test_aux_sets_are_the_side_blocks_san_supervises() -> None:
    """PAT keeps SAN's deep supervision (pat_tiny: side blocks 3 and 4, the tiny analogue of 7 and 8) as auxiliary
    sets, each decoded by SAN's side head from its own block; the decoded prediction is the main set."""
    model = tiny_pat().train()
    assert model.config.side.deep_supervision == (3, 4)
    sides = []
    model.side.register_forward_hook(lambda _m, _i, o: sides.append(o))
    out = run(model)
    assert list(out.aux) == ["side3", "side4"]
    with torch.no_grad():
        for block in (3, 4):
            expected = model.mask_decoder(sides[-1].queries[block], sides[-1].patches[block]).masks
            torch.testing.assert_close(out.aux[f"side{block}"].masks, expected, rtol=0, atol=0)
    assert not torch.allclose(out.aux["side3"].masks, out.aux["side4"].masks, atol=1e-4)
    images, labels = toy_batch()
    losses = model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses
    assert {f"{term}_{name}" for term in SET_TERMS for name in ("side3", "side4")} <= set(losses)
    assert all(v.requires_grad for v in model.mask_decoder.parameters())


@pytest.mark.parametrize(
    ("blocks", "names"),
    [([4], ["side4"]), ([3], ["side3"]), ([], [])],
)
def test_deep_supervision_chooses_the_aux_sets(blocks: list[int], names: list[str]) -> None:
    model = tiny_pat(**{"side.deep_supervision": blocks}).train()
    assert list(run(model).aux) == names
    images, labels = toy_batch()
    losses = model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses
    assert sorted(k for k in losses if k.startswith(SET_TERMS)) == sorted(
        f"{term}{suffix}" for term in SET_TERMS for suffix in [""] + [f"_{n}" for n in names]
    )
    # Without a supervised side set nothing reads SAN's side masks: that head is frozen, not left without gradient.
    assert all(p.requires_grad == bool(blocks) for p in model.mask_decoder.parameters())


def test_deep_supervision_blocks_must_exist() -> None:
    for bad in ([5], [0, 4], [-1]):
        with pytest.raises(ConfigError, match=r"side\.deep_supervision.*1\.\.4"):
            tiny_pat(**{"side.deep_supervision": bad})


def test_aux_sets_is_no_longer_a_key() -> None:
    """The sets follow side.deep_supervision; older weights files that record the key still load (test_pat_losses)."""
    with pytest.raises(ConfigError, match=r"unknown config key 'pat\.aux_sets'"):
        tiny_pat(**parse_assignments(["pat.aux_sets=[side7, side8]"]))


# ---------------------------------------------------------------------------------------------- pyramid base
def test_pyramid_base_side_grids() -> None:
    """Literal reading at 64 px: stages 16/8/4 (H/4, H/8, H/16), final grid H/4, a 2-step reconstruction head."""
    model = tiny_pat(**{"pat.pyramid_base": "side"}).train()
    out = run(model)
    assert out.grids.base == (4, 4) and out.grids.tap == (4, 4)
    assert out.grids.stages == {"early": (16, 16), "mid": (8, 8), "late": (4, 4)}
    assert {k: tuple(q.indices.shape[-2:]) for k, q in out.quant.items()} == {
        "early": (16, 16),
        "mid": (8, 8),
        "late": (4, 4),
        "latent": (4, 4),
    }
    assert out.main.masks.shape[-2:] == (16, 16)
    assert model.recon_head.num_upsamples == 2 and out.reconstruction.shape == (2, 3, 64, 64)
    assert [s.resample.factor for s in model.pixel_branch.stages] == [4.0, 2.0, 1.0]
