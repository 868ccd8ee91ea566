"""patseg.folder's parts and Segmenter.predict_batch: batches of one input size give one-at-a-time predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from patseg.build import build_model
from patseg.demo.shipped import load_shipped
from patseg.folder import decode_in_background, group_by_size, shard
from patseg.predictor import Segmenter


def _blocks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 image of 10-pixel blocks: regions a trained model tells apart."""
    cells = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3))
    return np.kron(cells, np.ones((10, 10, 1)))[:h, :w].astype(np.uint8)


def test_group_by_size_fills_groups_and_bounds_what_it_holds():
    keys = ["a", "b", "a", "a", "c", "b", "a", "a", "b"]
    groups = list(group_by_size(list(enumerate(keys)), key=lambda item: item[1], batch_size=3, window=4))
    assert sorted(i for g in groups for i, _ in g) == list(range(len(keys)))  # each item exactly once
    for g in groups:
        assert len({k for _, k in g}) == 1 and len(g) <= 3
        assert [i for i, _ in g] == sorted(i for i, _ in g)
    assert [i for i, _ in groups[0]] == [0, 2, 3]  # full as soon as the third "a" arrives
    # After item 6 five items wait (b1, c4, b5, a6 and the new one): the oldest group, b's, leaves unfilled.
    assert [i for i, _ in groups[1]] == [1, 5]
    sizes = list(group_by_size(range(10), key=lambda i: i, batch_size=4, window=2))
    assert sizes == [[i] for i in range(10)]  # all different: they stream out in order
    with pytest.raises(ValueError, match="batch_size"):
        list(group_by_size([1], key=lambda i: i, batch_size=0))


def test_shards_partition_the_files():
    items = list(range(7))
    shares = [shard(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard(items, 0, 1) == items
    with pytest.raises(ValueError, match="outside"):
        shard(items, 3, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_background_decoding_keeps_order_and_reports_unreadable_files(tmp_path, workers):
    rng = np.random.default_rng(0)
    images = [_blocks(rng, 20 + i, 30) for i in range(4)]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    Image.fromarray(images[0]).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:200])  # truncated
    files.insert(2, tmp_path / "cut.jpg")
    decoded = list(decode_in_background(files, workers))
    assert [d.index for d in decoded] == list(range(5))
    assert decoded[2].pixels is None and "cut.jpg" in str(decoded[2].error)
    ok = [d for d in decoded if d.error is None]
    for d, image in zip(ok, images):
        assert np.array_equal(d.image, image)


@pytest.mark.parametrize("preset", ["san_tiny", "pat_tiny"])
def test_batch_forward_slices_equal_one_at_a_time_on_random_models(preset):
    """One forward on the stack, sliced per image, gives each image's own forward: the padded inputs of 70x90 and
    64x96 images are both 64x96, with different valid parts, so the per-image resize and crop are exercised."""
    torch.manual_seed(0)
    seg = Segmenter(build_model(preset).eval(), ["sky", "tree", "road", "car"], short_side=64)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), _blocks(rng, 64, 96), _blocks(rng, 70, 90)]
    assert {seg.input_size(*image.shape[:2]) for image in images} == {(64, 96)}
    x, valids = seg._prepare_batch(images)
    assert x.shape == (3, 3, 64, 96) and valids == [(64, 82), (64, 96), (64, 82)]
    with torch.inference_mode():
        batched = seg.model(x, seg.class_embeddings).main
    for i, image in enumerate(images):
        one = seg.infer(image).output.main
        torch.testing.assert_close(batched.logits[i : i + 1], one.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.masks[i : i + 1], one.masks, atol=1e-4, rtol=1e-4)
    for labels, image in zip(seg.predict_batch(images), images):
        assert labels.shape == image.shape[:2] and labels.dtype == np.int64
        assert (labels == seg.predict(image)).mean() >= 0.999
    with pytest.raises(ValueError, match="one padded input size"):
        seg.predict_batch([images[0], _blocks(rng, 90, 70)])


@pytest.mark.parametrize("name", ["SAN-tiny", "PAT-tiny"])
def test_batch_labels_equal_one_at_a_time_on_trained_models(name):
    """The shipped demo models label block images with several classes, so equal labels mean something."""
    seg = Segmenter(load_shipped()[name], ["sky", "tree", "road", "car", "grass"], short_side=64)
    rng = np.random.default_rng(0)
    images = [_blocks(rng, 70, 90) for _ in range(4)] + [_blocks(rng, 64, 96)]
    single = [seg.predict(image) for image in images]
    assert sum(len(np.unique(labels)) > 1 for labels in single) >= 2  # not one class everywhere
    for one, batched in zip(single, seg.predict_batch(images)):
        assert (one == batched).mean() >= 0.999
