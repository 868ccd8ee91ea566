"""FID through torchmetrics on a random FID Inception, and rFID of pat_tiny.

The real Inception weights cannot be downloaded here: a random state dict in pytorch-fid's key layout (torchvision's
Inception3 with 1008 classes and no aux head) stands in. On CPU the network costs ~0.3 s per image at 299 x 299 and
the 2048-d metric's ``compute`` (eigenvalues of a 2048 x 2048 product) several seconds, so the fast tests use a few
images and the 64-d first-pool features (``fast_fid``); the slow ones run pool3, in one process and in two.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from patseg.build import build_model
from patseg.errors import CheckpointError, MissingFileError, UsageError
from patseg.evaluation import RFIDResult, inception_fid, reconstruction_fid
from patseg.evaluation import fid as fid_module
from patseg.evaluation import rfid as rfid_module
from patseg.evaluation.rfid import reconstruct, resize_and_crop, shard
from patseg.reproduce.tiny import write_random_inception


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights that keep activations O(1) through the 94 conv layers (the tiny reproduction's own file)."""
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    write_random_inception(path, seed=0)
    return path


@pytest.fixture(scope="module")
def pat_tiny():
    torch.manual_seed(0)
    return build_model("pat_tiny")


@pytest.fixture
def fast_fid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid_module, "FID_FEATURES", 64)


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 3, size, size) uint8 images with image-like structure: upsampled 6x6 noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    return (F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def naive_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of feature sets (n, D) in float64 without a D x D square root: the nonzero eigenvalues of S1 S2 are
    the squared singular values of X1 X2^T / sqrt((n1 - 1)(n2 - 1)) for the centred features X."""
    xa, xb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    trace_root = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(na * nb)
    mean_term = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean_term + (xa**2).sum() / na + (xb**2).sum() / nb - 2 * trace_root)


def test_random_weights_load_without_network(
    inception_weights: Path, monkeypatch: pytest.MonkeyPatch, fast_fid: None
) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    metric = inception_fid(inception_weights)
    saved = torch.load(inception_weights, weights_only=True)
    loaded = metric.inception.state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # the resize is TensorFlow's (as torch-fidelity's reference extractor), not torchmetrics' antialiased default
    reference = tfi.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["64"], feature_extractor_weights_path=str(inception_weights)
    )
    images = smooth_images(2, 72, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(metric.inception(images), reference(images)[0], rtol=1e-5, atol=1e-5)


def test_fid_of_identical_sets_is_zero_and_grows_with_noise(inception_weights: Path, fast_fid: None) -> None:
    metric = inception_fid(inception_weights)
    real = smooth_images(4, 48, seed=1)
    noisy = (real.float() + 30 * torch.randn(real.shape)).round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        real_feats, noisy_feats = metric.inception(real).double().numpy(), metric.inception(noisy).double().numpy()
    scale = float((real_feats**2).sum(1).mean())
    metric.update(real, real=True)
    metric.update(real, real=False)
    assert abs(float(metric.compute())) < 1e-6 * scale
    metric.reset()
    metric.update(real, real=True)
    metric.update(noisy, real=False)
    value = float(metric.compute())
    assert value > 1e-3 * scale
    assert value == pytest.approx(naive_fid(real_feats, noisy_feats), rel=1e-4)


def test_missing_or_foreign_weights_are_refused(tmp_path: Path, pat_tiny) -> None:
    with pytest.raises(MissingFileError, match=r"missing\.pth.*pt_inception-2015-12-05-6726825d\.pth.*fid_weights"):
        inception_fid(tmp_path / "missing.pth")
    dataset = [{"image": smooth_images(1, 32, seed=i)[0]} for i in range(2)]
    with pytest.raises(MissingFileError, match="missing.pth"):
        reconstruction_fid(
            pat_tiny, dataset, inception_weights=str(tmp_path / "missing.pth"), short_side=32, crop=32, progress=False
        )
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="fc.weight"):
        inception_fid(tmp_path / "other.pth")


def test_san_and_bad_arguments_are_refused(inception_weights: Path, pat_tiny) -> None:
    dataset = [{"image": smooth_images(1, 32, seed=i)[0]} for i in range(3)]
    with pytest.raises(UsageError, match="SAN has no reconstruction"):
        reconstruction_fid(build_model("san_tiny"), dataset, inception_weights=str(inception_weights))
    with pytest.raises(UsageError, match="multiple of 32"):
        reconstruction_fid(pat_tiny, dataset, inception_weights=str(inception_weights), short_side=64, crop=48)
    with pytest.raises(UsageError, match="at least 2 images"):
        reconstruction_fid(pat_tiny, dataset, inception_weights=str(inception_weights), limit=1)


def test_resize_and_crop() -> None:
    image = torch.arange(3 * 64 * 96, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 64, 96)
    assert torch.equal(resize_and_crop(image, 64, 32), image[:, 16:48, 32:64])  # no resize: the exact centre
    flat = torch.full((3, 30, 45), 77, dtype=torch.uint8)
    out = resize_and_crop(flat, 64, 64)  # upscaled to 64 x 96, then cropped
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64) and bool((out == 77).all())
    ramp = torch.linspace(0, 255, 200).round().to(torch.uint8).expand(3, 100, 200)
    out = resize_and_crop(ramp, 50, 50)  # 50 x 100, columns 25..74: the middle half of the ramp
    assert abs(int(out[0, 0, 0]) - 65) <= 1 and abs(int(out[0, 0, -1]) - 190) <= 1  # (2j + 0.5) * 255 / 199


def test_reconstruct_matches_the_forward_reconstruction(pat_tiny) -> None:
    images = smooth_images(2, 64, seed=4).float() / 255
    with torch.no_grad():
        expected = pat_tiny.eval()(images, pat_tiny.encode_vocabulary(["object"]), reconstruct=True).reconstruction
    torch.testing.assert_close(reconstruct(pat_tiny, images), expected, rtol=1e-5, atol=1e-6)


def image_dataset(count: int) -> list[dict[str, torch.Tensor]]:
    """Items like SemSegDataset's: (3, H, W) uint8 images of assorted sizes."""
    sizes = [(48, 64), (64, 40), (40, 40), (70, 50), (33, 90)]
    return [{"image": smooth_images(1, 96, seed=i)[0][:, :h, :w]} for i, (h, w) in enumerate(sizes[:count])]


def test_reconstruction_fid_on_pat_tiny(inception_weights: Path, pat_tiny, fast_fid: None) -> None:
    dataset = image_dataset(4)
    pat_tiny.train()
    result = reconstruction_fid(
        pat_tiny,
        dataset,
        inception_weights=str(inception_weights),
        short_side=32,
        crop=32,
        limit=3,
        batch_size=2,
        progress=False,
    )
    assert isinstance(result, RFIDResult) and result.num_images == 3
    assert np.isfinite(result.fid) and result.fid > 0  # a random model reconstructs poorly
    assert pat_tiny.training  # the mode is restored


def test_shard_by_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(shard(5)) == [0, 1, 2, 3, 4]
    monkeypatch.setattr(rfid_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(rfid_module.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(rfid_module.dist, "get_world_size", lambda: 3)
    assert list(shard(8)) == [1, 4, 7]


def _rfid_worker(rank: int, init_file: str, weights: str, model_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = build_model("pat_tiny")
    model.load_state_dict(torch.load(model_file, weights_only=True))
    result = reconstruction_fid(
        model, image_dataset(5), inception_weights=weights, short_side=32, crop=32, batch_size=2, progress=False
    )
    torch.save(result._asdict(), f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow  # pool3 features: three 2048 x 2048 eigenvalue problems and two process start-ups
def test_reconstruction_fid_is_the_same_over_two_processes(inception_weights: Path, pat_tiny, tmp_path: Path) -> None:
    single = reconstruction_fid(
        pat_tiny, image_dataset(5), inception_weights=str(inception_weights), short_side=32, crop=32, progress=False
    )
    assert single.num_images == 5 and np.isfinite(single.fid) and single.fid > 0
    torch.save(pat_tiny.state_dict(), tmp_path / "pat_tiny.pt")
    out = tmp_path / "result"
    mp.spawn(
        _rfid_worker,
        args=(str(tmp_path / "init"), str(inception_weights), str(tmp_path / "pat_tiny.pt"), str(out)),
        nprocs=2,
        join=True,
    )
    for rank in range(2):  # every rank saw 2 or 3 images and reports the rFID of all 5
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert got["num_images"] == 5
        assert got["fid"] == pytest.approx(single.fid, rel=1e-4)
