"""The detachable pyramid tokenizer: encode/decode shapes, determinism, the checkpoint round trip and token files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from naive import toy_batch
from patseg.build import build_model
from patseg.errors import MissingFileError, UsageError
from patseg.models.pat.model import PAT
from patseg.resize import resize_to_multiple
from patseg.tokenizer import LEVELS, PyramidTokenizer, TokenPyramid, load_pyramids, save_pyramids
from patseg.weights.files import save_weights

# pat_tiny at 64x64: stages H/8, H/16, H/32; latent at the side grid H/16 (codebooks 32 / 16 / 8 / 64)
GRIDS = {"early": (16, 16), "mid": (8, 8), "late": (4, 4), "latent": (4, 4)}
SIZES = {"early": 32, "mid": 16, "late": 8, "latent": 64}


@pytest.fixture
def model() -> PAT:
    torch.manual_seed(0)
    return build_model("pat_tiny")


def test_encode_shapes_ranges_and_determinism(model: PAT) -> None:
    tok = PyramidTokenizer(model.train())
    assert not model.training  # the tokenizer always runs the model in eval mode
    images, _ = toy_batch()
    pyramid = tok.encode(images)
    assert tuple(pyramid.codes) == LEVELS == ("early", "mid", "late", "latent")
    assert pyramid.grids == GRIDS and pyramid.image_size == (64, 64)
    for level, codes in pyramid.codes.items():
        assert codes.dtype == torch.int64 and codes.shape[0] == 2
        assert 0 <= int(codes.min()) and int(codes.max()) < SIZES[level]
        assert len(codes.unique()) > 1, level  # a random model still spreads the toy images over several codes
        assert torch.equal(tok.encode(images).codes[level], codes)


def test_decode_shape_range_and_determinism(model: PAT) -> None:
    tok = PyramidTokenizer(model)
    pyramid = tok.encode(toy_batch()[0])
    image = tok.decode(pyramid)
    assert image.shape == (2, 3, 64, 64) and not image.requires_grad
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    torch.testing.assert_close(tok.decode(pyramid), image, rtol=0, atol=0)
    # decoding reads the codes: another code map gives another image
    other = TokenPyramid(codes={k: (v + 1) % SIZES[k] for k, v in pyramid.codes.items()}, image_size=(64, 64))
    assert not torch.allclose(tok.decode(other), image, atol=1e-4)


def test_decode_reads_only_the_decoder_stages() -> None:
    """decoder_stages = (late, mid): the early codes are encoded but the decoder never reads them."""
    torch.manual_seed(0)
    tok = PyramidTokenizer(build_model("pat_tiny", overrides={"pat.decoder_stages": ["late", "mid"]}))
    pyramid = tok.encode(toy_batch()[0])
    image = tok.decode(pyramid)
    assert image.shape == (2, 3, 64, 64)
    codes = dict(pyramid.codes, early=torch.zeros_like(pyramid.codes["early"]))
    torch.testing.assert_close(tok.decode(TokenPyramid(codes=codes, image_size=(64, 64))), image, rtol=0, atol=0)


def test_bad_inputs_raise(model: PAT) -> None:
    tok = PyramidTokenizer(model)
    with pytest.raises(ValueError, match="multiples of 32"):
        tok.encode(torch.rand(1, 3, 64, 48))
    with pytest.raises(ValueError, match="multiples of 32"):
        tok.encode(torch.rand(3, 64, 64))
    with pytest.raises(UsageError, match="SAN has no tokens"):
        PyramidTokenizer(build_model("san_tiny"))


def test_round_trip_through_a_checkpoint(model: PAT, tmp_path: Path) -> None:
    images, _ = toy_batch()
    tok = PyramidTokenizer(model)
    pyramid = tok.encode(images)
    image = tok.decode(pyramid)
    path = save_weights(model, tmp_path / "pat.safetensors")
    torch.manual_seed(123)  # a different random init everywhere: everything must come from the file
    loaded = PyramidTokenizer.from_checkpoint(str(path))
    assert loaded.model.config == model.config
    assert not loaded.model.training
    reloaded = loaded.encode(images)
    for level in LEVELS:
        assert torch.equal(reloaded.codes[level], pyramid.codes[level]), level
    torch.testing.assert_close(loaded.decode(pyramid), image, rtol=0, atol=0)


def test_token_files_round_trip(model: PAT, tmp_path: Path) -> None:
    tok = PyramidTokenizer(model)
    images, _ = toy_batch()
    pyramids = [tok.encode(images[:1]), tok.encode(images[1:])]
    arrays = pyramids[0].to_numpy()
    assert all(a.dtype == np.uint8 for a in arrays.values())  # every codebook here has at most 256 codes
    save_pyramids(tmp_path / "tokens.npz", pyramids, {"weights": "pat.safetensors"})
    loaded, meta = load_pyramids(tmp_path / "tokens.npz")
    assert meta["count"] == 2 and meta["weights"] == "pat.safetensors" and meta["image_sizes"] == [[64, 64]] * 2
    for got, want in zip(loaded, pyramids):
        assert got.image_size == want.image_size
        for level in LEVELS:
            assert torch.equal(got.codes[level], want.codes[level])
    torch.testing.assert_close(tok.decode(loaded[1]), tok.decode(pyramids[1]), rtol=0, atol=0)


def test_damaged_or_missing_token_files_are_named(model: PAT, tmp_path: Path) -> None:
    images, _ = toy_batch()
    good = tmp_path / "tokens.npz"
    save_pyramids(good, [PyramidTokenizer(model).encode(images[:1])], {"weights": "pat.safetensors"})
    data = good.read_bytes()
    damaged = {
        "truncated.npz": data[: len(data) // 2],
        "flipped.npz": data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:],  # payload, intact index
        "text.npz": b"not a zip file",
    }
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError, match=name):
            load_pyramids(tmp_path / name)
    with pytest.raises(MissingFileError, match="none.npz"):
        load_pyramids(tmp_path / "none.npz")


def test_large_codebooks_use_uint16() -> None:
    pyramid = TokenPyramid(
        codes={"early": torch.tensor([[[0, 300]]]), "mid": torch.tensor([[[3]]])}, image_size=(32, 64)
    )
    arrays = pyramid.to_numpy()
    assert arrays["early"].dtype == np.uint16 and arrays["early"].tolist() == [[[0, 300]]]
    assert arrays["mid"].dtype == np.uint8


def test_resize_to_multiple_sizes_and_values() -> None:
    ramp = np.broadcast_to(np.linspace(0, 255, 70).astype(np.uint8)[None, :, None], (50, 70, 3)).copy()
    x = resize_to_multiple(ramp, 64)  # shortest edge: (64, 90); each side to the nearest multiple of 32
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    row = x[0, 0, 10]
    assert bool((row[1:] >= row[:-1] - 1e-6).all()) and float(row[0]) < 0.02 and float(row[-1]) > 0.98
    flat = np.full((40, 300, 3), 51, dtype=np.uint8)  # long side capped at 2560 first: (64, 480)
    assert torch.allclose(resize_to_multiple(flat, 64), torch.full((1, 3, 64, 480), 0.2), atol=1e-6)
    assert resize_to_multiple(flat, 64, max_long_side=256).shape == (1, 3, 32, 256)  # (34, 256) -> (32, 256)
    exact = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    assert torch.equal(resize_to_multiple(exact, 64)[0], torch.from_numpy(exact).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        resize_to_multiple(exact.astype(np.float32), 64)


def test_encode_image_resizes_then_encodes(model: PAT) -> None:
    tok = PyramidTokenizer(model)
    images, _ = toy_batch()
    rgb = (images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # (64, 64, 3): already a multiple
    pyramid = tok.encode_image(rgb, 64)
    want = tok.encode(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    assert pyramid.image_size == (64, 64) and pyramid.grids == GRIDS
    for level in LEVELS:
        assert torch.equal(pyramid.codes[level], want.codes[level]), level
    wide = tok.encode_image(np.ascontiguousarray(np.concatenate([rgb, rgb[:, :40]], axis=1)), 64)  # 64 x 104
    assert wide.image_size == (64, 96) and wide.codes["early"].shape == (1, 16, 24)
