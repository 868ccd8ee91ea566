"""ClipBackbone against vanilla open_clip / timm, SAN's recognition-mask rules, pos-embed resizing, weights loading.

Tiny configs: ``patseg-tiny-ViT`` (6 blocks, 64 wide, 4 heads, patch 8, 64 px) and ``patseg-tiny-EVA`` (timm
``eva02_tiny_patch14_224``: 12 blocks, 192 wide, 3 heads, RoPE, SwiGLU).
"""

from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from patseg.models.clip.backbone import (
    BLOCKED,
    ClipBackbone,
    clip_trainable_parameters,
    load_clip,
    recognition_attn_mask,
)
from patseg.models.clip.open_clip_loader import create_open_clip, resize_pos_embed

VIT, EVA = "patseg-tiny-ViT", "patseg-tiny-EVA"
SETUPS = {
    VIT: {"taps": (0, 2, 3, 4), "rec_start": 4, "size": 64, "depth": 6},
    EVA: {"taps": (0, 3, 6, 9), "rec_start": 9, "size": 224, "depth": 12},
}


def _build(name: str):
    """(vanilla open_clip model, ClipBackbone on a copy of its image tower)."""
    torch.manual_seed(1)
    model, _ = create_open_clip(name, quick_gelu=True, weights=None)
    s = SETUPS[name]
    return model, ClipBackbone(copy.deepcopy(model.visual), taps=s["taps"], rec_start=s["rec_start"])


@pytest.fixture(scope="module")
def vit():
    return _build(VIT)


@pytest.fixture(scope="module")
def eva():
    return _build(EVA)


def _pair(request, name):
    return request.getfixturevalue("vit" if name == VIT else "eva")


def _vanilla_final_tokens(model, x):
    """Vanilla (B, 1 + L, C) token state after the last block."""
    v = model.visual
    if name_of(model) == VIT:
        out = v.forward_intermediates(
            x,
            indices=[len(v.transformer.resblocks) - 1],
            output_fmt="NLC",
            intermediates_only=True,
            output_extra_tokens=True,
        )
        return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
    ((patches, prefix),) = v.trunk.forward_intermediates(
        x, indices=[len(v.trunk.blocks) - 1], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
    )
    return torch.cat([prefix, patches], dim=1)


def name_of(model) -> str:
    return EVA if isinstance(model.visual, open_clip.timm_model.TimmModel) else VIT


# ------------------------------------------------------------------------------------------------ (a) taps
@torch.no_grad()
def test_vit_taps_equal_open_clip_intermediates(vit):
    model, bb = vit
    x = torch.randn(2, 3, 64, 64)
    feats = bb.extract(x)
    out = model.visual.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    emb = model.visual._embeds(x)[:, 1:].transpose(1, 2).reshape(2, 64, 8, 8)  # ln_pre output = SAN's index 0
    assert feats.grid == (8, 8) and sorted(feats.taps) == [0, 2, 3, 4]
    torch.testing.assert_close(feats.taps[0], emb)
    for tap, ref in zip((2, 3, 4), out["image_intermediates"]):
        torch.testing.assert_close(feats.taps[tap], ref)


@torch.no_grad()
def test_eva_taps_equal_timm_intermediates(eva):
    model, bb = eva
    trunk = model.visual.trunk
    x = torch.randn(1, 3, 224, 224)
    feats = bb.extract(x)
    refs = trunk.forward_intermediates(x, indices=[2, 5, 8], intermediates_only=True)
    emb, _ = trunk._pos_embed(trunk.patch_embed(x))
    emb = trunk.norm_pre(emb)[:, 1:].transpose(1, 2).reshape(1, 192, 16, 16)
    assert feats.grid == (16, 16)
    torch.testing.assert_close(feats.taps[0], emb)
    for tap, ref in zip((3, 6, 9), refs):
        torch.testing.assert_close(feats.taps[tap], ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ (b) invariance
@pytest.mark.parametrize("name", [VIT, EVA])
@torch.no_grad()
def test_clip_tokens_unchanged_by_sos_path(request, name):
    model, bb = _pair(request, name)
    size, batch = SETUPS[name]["size"], 2 if name == VIT else 1
    x = torch.randn(batch, 3, size, size)
    feats = bb.extract(x)
    bias = 20 * torch.randn(batch, bb.num_heads, 5, *feats.grid)  # large, arbitrary bias
    tokens = bb.recognition_tokens(feats, bias)
    torch.testing.assert_close(tokens[:, 5:], _vanilla_final_tokens(model, x), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(bb.encode_image(x), model.encode_image(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ (c) masking
def test_recognition_mask_layout():
    bias = torch.randn(1, 2, 3, 2, 2)
    m = recognition_attn_mask(bias)
    assert m.shape == (1, 2, 8, 8)
    sos = torch.full((3, 3), BLOCKED).fill_diagonal_(0.0)
    assert torch.equal(m[0, 1, :3, :3], sos)
    assert (m[0, :, 3:, :3] == BLOCKED).all() and (m[0, :, 3:, 3:] == 0).all()
    assert (m[0, :, :3, 3] == BLOCKED).all()
    assert torch.equal(m[0, :, :3, 4:], bias[0].flatten(-2))


def _naive_block(blk, x, allowed, bias):
    """One open_clip ResidualAttentionBlock on (N, C) float64 tokens; keys not ``allowed[h, i]`` are left out."""
    n, c = x.shape
    heads = blk.attn.num_heads
    d = c // heads
    q, k, v = (blk.ln_1(x) @ blk.attn.in_proj_weight.t() + blk.attn.in_proj_bias).chunk(3, dim=-1)
    out = torch.zeros_like(x)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        for i in range(n):
            keys = [j for j in range(n) if allowed[h, i, j]]
            logits = torch.stack([q[i, sl] @ k[j, sl] / math.sqrt(d) + bias[h, i, j] for j in keys])
            w = torch.softmax(logits, dim=0)
            out[i, sl] = sum(w[t] * v[j, sl] for t, j in enumerate(keys))
    x = x + blk.attn.out_proj(out)
    return x + blk.mlp(blk.ln_2(x))


@torch.no_grad()
def test_sos_output_equals_naive_masked_attention_float64(vit):
    _, bb = vit
    bb = copy.deepcopy(bb).double()
    q, heads, (h, w) = 3, bb.num_heads, (4, 4)
    feats = bb.extract(torch.randn(1, 3, 32, 32, dtype=torch.float64))  # grid 4x4: pos-embed resized from 8x8
    allowed_patches = torch.rand(heads, q, h * w) < 0.4
    allowed_patches[..., 0] = True
    values = torch.randn(heads, q, h * w, dtype=torch.float64)
    bias = torch.where(allowed_patches, values, torch.full_like(values, BLOCKED))
    got = bb.recognize(feats, bias.view(1, heads, q, h, w))

    n = q + 1 + h * w  # reference rules, written independently of recognition_attn_mask
    allowed = torch.zeros(heads, n, n, dtype=torch.bool)
    full_bias = torch.zeros(heads, n, n, dtype=torch.float64)
    allowed[:, q:, q:] = True
    for i in range(q):
        allowed[:, i, i] = True
        allowed[:, i, q + 1 :] = allowed_patches[:, i]
        full_bias[:, i, q + 1 :] = values[:, i]
    x = torch.cat([feats.tokens[0, :1].expand(q, -1), feats.tokens[0]])
    for blk in bb.visual.transformer.resblocks[bb.rec_start :]:
        x = _naive_block(blk, x, allowed, full_bias)
    ref = F.normalize(bb.visual.ln_post(x[:q]) @ bb.visual.proj, dim=-1)
    torch.testing.assert_close(got[0], ref, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", [VIT, EVA])
@torch.no_grad()
def test_sos_i_does_not_depend_on_sos_j(request, name):
    _, bb = _pair(request, name)
    size = SETUPS[name]["size"] // 2
    feats = bb.extract(torch.randn(1, 3, size, size))
    bias = torch.randn(1, bb.num_heads, 4, *feats.grid)
    base = bb.recognize(feats, bias)
    bias2 = bias.clone()
    bias2[:, :, 2] = 5 * torch.randn_like(bias2[:, :, 2])
    moved = bb.recognize(feats, bias2)
    torch.testing.assert_close(moved[:, [0, 1, 3]], base[:, [0, 1, 3]], atol=1e-6, rtol=1e-6)
    assert (moved[:, 2] - base[:, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("name", [VIT, EVA])
@torch.no_grad()
def test_single_patch_bias_attends_only_that_patch(request, name):
    """One recognition block: with -100 everywhere but patch p, the SOS output sees no other patch."""
    model, _ = _pair(request, name)
    bb = ClipBackbone(copy.deepcopy(model.visual), taps=(0,), rec_start=SETUPS[name]["depth"] - 1)
    size = SETUPS[name]["size"] // 2
    feats = bb.extract(torch.randn(1, 3, size, size))
    h, w = feats.grid
    p = 5
    bias = torch.full((1, bb.num_heads, 2, h, w), BLOCKED)
    bias.view(1, bb.num_heads, 2, -1)[..., p] = 0.0
    noise = torch.randn_like(feats.tokens)
    others = noise.clone()
    others[:, [0, 1 + p]] = 0.0  # perturb every patch except p (CLS is kept: it seeds the SOS tokens)

    def run(b, delta):
        return bb.recognize(type(feats)(taps=feats.taps, tokens=feats.tokens + delta, grid=feats.grid), b)

    base = run(bias, 0.0)
    torch.testing.assert_close(run(bias, others), base, atol=1e-5, rtol=1e-5)
    assert (run(bias, noise - others) - base).abs().max() > 1e-3  # patch p itself does matter
    open_bias = torch.zeros_like(bias)  # without the mask the same perturbation changes the SOS outputs
    assert (run(open_bias, others) - run(open_bias, 0.0)).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ (d) pos-embed
def _naive_bicubic(img, out_h, out_w, a=-0.75):
    """float64 bicubic resize (C, H, W), align_corners=False, border-clamped taps: PyTorch's convention."""

    def cubic(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    def taps(n_in, n_out, i):
        src = (i + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(src)
        return [(min(max(x0 + k, 0), n_in - 1), cubic(src - (x0 + k))) for k in (-1, 0, 1, 2)]

    c, hi, wi = img.shape
    out = torch.zeros(c, out_h, out_w, dtype=torch.float64)
    for y in range(out_h):
        for x in range(out_w):
            for yy, wy in taps(hi, out_h, y):
                for xx, wx in taps(wi, out_w, x):
                    out[:, y, x] += wy * wx * img[:, yy, xx]
    return out


def test_resize_pos_embed_keeps_class_slot_and_is_bicubic():
    pos = torch.randn(1 + 4 * 5, 3, dtype=torch.float64)
    out = resize_pos_embed(pos, (4, 5), (7, 3))
    assert out.shape == (1 + 21, 3)
    assert torch.equal(out[0], pos[0])
    ref = _naive_bicubic(pos[1:].t().reshape(3, 4, 5), 7, 3)
    torch.testing.assert_close(out[1:].t().reshape(3, 7, 3), ref, atol=1e-12, rtol=1e-12)
    assert resize_pos_embed(pos, (4, 5), (4, 5)) is pos


@torch.no_grad()
def test_vit_other_grid_equals_open_clip_with_resized_pos_embed(vit):
    model, bb = vit
    other = open_clip.create_model(VIT, force_quick_gelu=True, force_image_size=(80, 48))
    sd = model.state_dict()
    sd["visual.positional_embedding"] = resize_pos_embed(sd["visual.positional_embedding"], (8, 8), (10, 6))
    other.load_state_dict(sd)
    x = torch.randn(2, 3, 80, 48)
    torch.testing.assert_close(bb.encode_image(x), other.encode_image(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_eva_other_grid_resizes_pos_embed_and_rope(eva):
    model, bb = eva
    trunk = copy.deepcopy(model.visual.trunk)
    trunk.set_input_size(img_size=(18 * 14, 12 * 14))  # timm rebuilds its cached RoPE for the 18x12 grid
    trunk.pos_embed.data = resize_pos_embed(model.visual.trunk.pos_embed[0], (16, 16), (18, 12))[None]
    x = torch.randn(1, 3, 18 * 14, 12 * 14)
    feats = bb.extract(x)
    (ref,) = trunk.forward_intermediates(x, indices=[8], intermediates_only=True)
    assert feats.grid == (18, 12)
    torch.testing.assert_close(feats.taps[9], ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", [VIT, EVA])
def test_only_pos_embed_trains_and_receives_gradients(request, name):
    _, bb = _pair(request, name)
    bb = copy.deepcopy(bb)
    pos = bb.trunk.pos_embed
    assert clip_trainable_parameters(bb) == pos.numel()
    bb.train()
    assert not bb.training and not bb.visual.training
    size = SETUPS[name]["size"] // 2
    feats = bb.extract(torch.randn(1, 3, size, size))
    bias = torch.randn(1, bb.num_heads, 2, *feats.grid, requires_grad=True)
    (bb.recognize(feats, bias).sum() + feats.taps[max(feats.taps)].square().mean()).backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0
    assert bias.grad is not None and bias.grad.abs().sum() > 0


def test_bad_arguments_are_rejected(vit):
    model, bb = vit
    with pytest.raises(ValueError, match="rec_start"):
        ClipBackbone(copy.deepcopy(model.visual), taps=(0,), rec_start=6)
    with pytest.raises(ValueError, match="taps"):
        ClipBackbone(copy.deepcopy(model.visual), taps=(0, 5), rec_start=4)
    feats = bb.extract(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="attn_bias"):
        bb.recognize(feats, torch.zeros(1, bb.num_heads, 2, 4, 4))


# ------------------------------------------------------------------------------------------------ (e) weights
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@torch.no_grad()
def test_weights_round_trip_through_a_file(tmp_path, suffix):
    torch.manual_seed(3)
    model, tokenizer = create_open_clip(VIT, quick_gelu=True, weights=None)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    bb, text = load_clip(VIT, quick_gelu=True, weights=str(path), taps=(0, 2), rec_start=4)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(bb.encode_image(x), model.encode_image(x), atol=0, rtol=0)
    ref = F.normalize(model.encode_text(tokenizer(["a photo of a cat."])), dim=-1)
    torch.testing.assert_close(text(["cat"], ["a photo of a {}."]), ref, atol=1e-6, rtol=1e-6)
    assert clip_trainable_parameters(bb, text) == 65 * 64  # the visual positional embedding only


def test_missing_weights_file_names_file_and_source(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors") as err:
        load_clip(VIT, quick_gelu=True, weights=str(missing), taps=(0,), rec_start=4)
    assert VIT in str(err.value)
    with pytest.raises(FileNotFoundError, match="'openai'.*timm/vit_base_patch16_clip_224.openai"):
        create_open_clip("ViT-B-16", quick_gelu=True, weights=str(missing))


def test_mismatched_weights_file_names_file_and_model(tmp_path):
    model, _ = create_open_clip(VIT, quick_gelu=True, weights=None)
    path = tmp_path / "vit_tiny.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="vit_tiny.pt") as err:
        load_clip(EVA, quick_gelu=False, weights=str(path), taps=(0,), rec_start=9)
    assert f"'{EVA}'" in str(err.value)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_open_clip("ViT-Nope", quick_gelu=True, weights=None)


# ------------------------------------------------------------------------------------------------ full size
@pytest.mark.slow
@pytest.mark.parametrize(
    "name,quick_gelu,taps,rec_start,pos_numel",
    [
        ("ViT-B-16", True, (0, 3, 6, 9), 9, 197 * 768),
        ("EVA02-B-16", False, (0, 3, 6, 9), 9, 197 * 768),
        ("ViT-L-14-336", True, (0, 6, 12, 18), 18, 577 * 1024),
    ],
)
@torch.no_grad()
def test_full_size_architectures_match_open_clip(name, quick_gelu, taps, rec_start, pos_numel):
    model, _ = create_open_clip(name, quick_gelu=quick_gelu, weights=None)
    bb = ClipBackbone(copy.deepcopy(model.visual), taps=taps, rec_start=rec_start)
    assert clip_trainable_parameters(bb) == pos_numel  # SAN's logged trainable count includes it
    size = model.visual.image_size[0]
    x = torch.randn(1, 3, size, size)
    feats = bb.extract(x)
    tokens = bb.recognition_tokens(feats, 10 * torch.randn(1, bb.num_heads, 3, *feats.grid))
    torch.testing.assert_close(tokens[:, 3:], _vanilla_final_tokens(model, x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bb.encode_image(x), model.encode_image(x), atol=1e-4, rtol=1e-4)
    half = bb.extract(torch.randn(1, 3, 320, 448))  # SAN's CLIP input for a 640x896 crop (ViT-B/16)
    assert half.grid == (320 // bb.patch_size, 448 // bb.patch_size)
