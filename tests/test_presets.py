"""Shipped presets: every record loads, SAN's exact trainable parameter counts, PAT's count against the paper's 23M,
and (slow) one 640x640 forward pass of every full-size preset on CPU with random weights."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from patseg.build import build_model
from patseg.config import list_presets, load_preset
from patseg.models.pat.model import PAT
from patseg.models.san.model import SAN

FULL_SIZE = ["san_vitb16", "san_vitl14", "san_evab16", "pat_vitb16_clip", "pat_vitb16_evaclip", "pat_vitl14_clip"]
SAN_PREFIXES = ("clip.", "text.", "side.", "mask_decoder.", "bg_embed")


def trainable(model: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefixes))


def test_every_preset_is_listed_and_loads() -> None:
    names = list_presets()
    assert set(FULL_SIZE + ["san_tiny", "pat_tiny"]) <= set(names)
    for name in names:
        cfg = load_preset(name)
        assert cfg.name == name
        assert cfg.is_pat == name.startswith("pat_")


@pytest.mark.parametrize("name, expected", [("san_vitb16", 8_370_866), ("san_vitl14", 9_321_650)])
def test_san_trainable_parameters_match_san(name: str, expected: int) -> None:
    """SAN's logged counts (its training logs): side adapter + mask decoder + CLIP pos-embed + bg embedding."""
    model = build_model(name)
    assert isinstance(model, SAN) and not isinstance(model, PAT)
    assert trainable(model) == expected
    # the only trainable CLIP tensor is the visual positional embedding (SAN's CLIP_FROZEN_EXCLUDE)
    clip_trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(("clip.", "text."))]
    assert len(clip_trainable) == 1 and "pos" in clip_trainable[0]


def test_pat_vitb16_trainable_parameters() -> None:
    """PAT's SAN part is exactly SAN; the whole integration is near the paper's "adds 23M" (docs/design.md)."""
    model = build_model("pat_vitb16_clip")
    assert trainable(model, SAN_PREFIXES) == 8_370_866
    total = trainable(model)
    assert total == 20_580_355  # pins the PAT modules' sizes; update with any intended change
    assert 20e6 < total < 24e6
    # the former reading (pixel Transformers, pyramid on CLIP's grid) stays buildable with its own count
    former = build_model("pat_vitb16_clip", overrides={"pat.decoder": "pixels", "pat.pyramid_base": "clip"})
    assert trainable(former) == 21_118_803


def class_embeddings(model: SAN, num: int = 3) -> torch.Tensor:
    return F.normalize(torch.randn(num, model.clip.out_dim), dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_forward_at_640(name: str) -> None:
    """Random weights, eval mode, one 640x640 image: shapes follow the pyramid grids and every output is finite."""
    start = time.perf_counter()
    model = build_model(name).eval()
    built = time.perf_counter()
    image = torch.rand(1, 3, 640, 640)
    emb = class_embeddings(model)
    with torch.no_grad():
        if isinstance(model, PAT):
            out = model(image, emb, reconstruct=True)
            assert out.main.masks.shape == (1, 100, 160, 160)  # final decoded grid H/4 (pyramid on the side grid)
            assert out.reconstruction.shape == (1, 3, 640, 640)
            assert 0 <= float(out.reconstruction.min()) and float(out.reconstruction.max()) <= 1
            assert out.grids.stages == {"early": (160, 160), "mid": (80, 80), "late": (40, 40)}
            assert {k: tuple(q.indices.shape) for k, q in out.quant.items()} == {
                "early": (1, 160, 160),
                "mid": (1, 80, 80),
                "late": (1, 40, 40),
                "latent": (1, 40, 40),
            }
            assert out.grids.tap == (40, 40)  # ViT-B's 20x20 and ViT-L's 32x32 CLIP grids go to the side grid
        else:
            out = model(image, emb)
            assert out.main.masks.shape == (1, 100, 40, 40)  # SAN's side grid H/16
        assert out.aux == {}
        assert out.main.logits.shape == (1, 100, 4)
        assert torch.isfinite(out.main.masks).all() and torch.isfinite(out.main.logits).all()
    done = time.perf_counter()
    print(f"\n{name}: build {built - start:.1f}s, forward {done - built:.1f}s")
