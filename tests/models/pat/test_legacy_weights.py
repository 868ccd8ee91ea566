"""Weights files written before PAT's decoder took in the latent's PostQuant still load and compute the same."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from naive import toy_batch, unit_rows
from patseg.build import build_model
from patseg.config import to_dict
from patseg.weights.files import CONFIG_METADATA_KEY


def _old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensor names of the older layout: one PostQuant and latent resampler in the pixel branch."""
    old = {}
    for key, value in state.items():
        if key.startswith("pixel_decoder.post_quant.") or key.startswith("pixel_decoder.stages.0.resample."):
            continue  # the older separate decoders shared the pixel branch's entry
        key = key.replace("decoder.stages.0.resample.", "pixel_branch.latent_resample.", 1)
        key = key.replace("decoder.post_quant.", "pixel_branch.latent_post_quant.", 1)
        old[key.replace(".tokens.", ".cross.")] = value
    return old


@pytest.mark.parametrize("shared", [True, False])
def test_older_file_loads_into_the_pixels_reading(tmp_path, shared: bool) -> None:
    torch.manual_seed(0)
    overrides = {"pat.decoder": "pixels", "pat.pyramid_base": "clip", "pat.shared_decoder": shared}
    model = build_model("pat_tiny", overrides=overrides).eval()
    if not shared:  # the older model's one entry, seen by both decoders
        model.pixel_decoder.post_quant.load_state_dict(model.decoder.post_quant.state_dict())
        model.pixel_decoder.stages[0].resample.load_state_dict(model.decoder.stages[0].resample.state_dict())
    record = to_dict(model.config)
    for key in ("decoder", "spade_block"):  # fields the older record did not have
        del record["pat"][key]
    old = _old_layout({k: v.contiguous() for k, v in model.state_dict().items()})
    assert any(k.startswith("pixel_branch.latent_resample.") for k in old)  # clip base: a strided conv
    path = tmp_path / "old.safetensors"
    save_file(old, str(path), metadata={"format": "pt", CONFIG_METADATA_KEY: json.dumps(record)})

    loaded = build_model(None, weights=str(path)).eval()
    assert loaded.config.pat.decoder == "pixels" and loaded.config.pat.spade_block == "norm"
    images, _ = toy_batch()
    emb = unit_rows(4, model.clip.out_dim)
    with torch.no_grad():
        want, got = model(images, emb, reconstruct=True), loaded(images, emb, reconstruct=True)
    torch.testing.assert_close(got.main.masks, want.main.masks, rtol=0, atol=0)
    torch.testing.assert_close(got.reconstruction, want.reconstruction, rtol=0, atol=0)
