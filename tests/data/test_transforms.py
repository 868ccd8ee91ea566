import colorsys

import numpy as np
import pytest
import torch

from patseg.data import ColorAugSSD, TrainTransform, collate_semseg, san_short_sides
from patseg.data.color import hsv8_to_rgb, rgb_to_hsv8
from patseg.data.transforms import resize_label
from patseg.resize import ceil_to_multiple, round_to_multiple, shortest_edge_size


def test_san_short_sides_and_shortest_edge_rule():
    assert san_short_sides(640) == (320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960)
    assert san_short_sides(64) == (32, 38, 44, 51, 57, 64, 70, 76, 83, 89, 96)
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)  # 640 * 4/3 = 853.33
    assert shortest_edge_size(375, 500, 640, 2560) == (640, 853)
    assert shortest_edge_size(100, 1000, 640, 2560) == (256, 2560)  # long side capped
    assert shortest_edge_size(700, 300, 64, 1000) == (149, 64)
    # exact halves round as detectron2's get_output_shape does (its float arithmetic, not the exact value)
    assert shortest_edge_size(29, 1024, 640, 2560) == (72, 2560)  # 29 * 2.5 = 72.5
    assert shortest_edge_size(161, 1024, 128, 512) == (81, 512)  # 161 / 2 = 80.5


def test_multiples_of_32():
    assert [ceil_to_multiple(n) for n in (1, 32, 33, 64, 853)] == [32, 32, 64, 64, 864]
    assert [round_to_multiple(n) for n in (1, 15, 47, 48, 49, 80, 112, 853)] == [32, 32, 32, 64, 64, 64, 128, 864]
    assert round_to_multiple(20, 16) == 16 and ceil_to_multiple(20, 16) == 32


def test_resize_label_is_nearest():
    label = torch.tensor([[0, 1], [2, 65535]])
    up = resize_label(label, (4, 4))
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 65535, 65535], [2, 2, 65535, 65535]])
    assert torch.equal(up, expected)


def _coded_pair(h, w):
    """Image whose red channel encodes the label, so geometric misalignment shows."""
    label = torch.arange(h * w).reshape(h, w) % 7
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = (label * 30).to(torch.uint8)
    image[1] = torch.arange(w, dtype=torch.uint8)[None, :].expand(h, w)
    return image, label


def test_train_transform_crop_flip_pad_keep_image_and_label_aligned():
    image, label = _coded_pair(40, 56)
    # the short side is drawn equal to the image's, so there is no resampling and the check is exact
    transform = TrainTransform(crop_size=48, short_sides=(40,), max_size=400, ignore_label=255, color_jitter=False)
    flips = set()
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        out_image, out_label = transform(image, label, generator=g)
        assert out_image.shape == (3, 48, 48) and out_label.shape == (48, 48)
        assert out_label.dtype == torch.int64 and out_image.dtype == torch.uint8
        assert (out_label[40:] == 255).all() and (out_image[:, 40:] == 128).all()  # padded rows
        valid = out_label[:40]
        assert torch.equal(out_image[0, :40].long(), valid * 30)
        flips.add(bool(out_image[1, 0, 0] > out_image[1, 0, 1]))  # the column ramp runs backwards after a flip
    assert flips == {True, False}


def test_train_transform_is_deterministic_with_a_generator_and_jitters_scale():
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    label = torch.randint(0, 4, (50, 70))
    transform = TrainTransform(crop_size=32, max_size=128)
    a = transform(image, label, generator=torch.Generator().manual_seed(3))
    b = transform(image, label, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_hsv_conversion_matches_colorsys_and_round_trips():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 3), dtype=np.uint8)
    hsv = rgb_to_hsv8(rgb[None])[0]
    for (r, g, b), (h8, s8, v8) in zip(rgb, hsv):
        h, s, _ = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert v8 == max(r, g, b)
        assert abs(s8 - s * 255) <= 0.5
        assert min(abs(h8 - h * 180), 180 - abs(h8 - h * 180)) <= 0.5
    back = hsv8_to_rgb(hsv[None])[0].astype(int)
    assert np.abs(back - rgb.astype(int)).max() <= 3  # 8-bit hue/saturation quantisation only


def test_color_aug_identity_ranges_and_value_checks():
    image = torch.randint(0, 256, (3, 9, 11), dtype=torch.uint8)
    neutral = ColorAugSSD(brightness_delta=0.0, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0), hue_delta=0)
    for seed in range(4):
        out = neutral(image, generator=torch.Generator().manual_seed(seed))
        assert out.dtype == torch.uint8 and out.shape == image.shape
        assert (out.int() - image.int()).abs().max() <= 3
    bright = ColorAugSSD(brightness_delta=32.0, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0), hue_delta=0)
    outs = [bright(image, generator=torch.Generator().manual_seed(s)) for s in range(12)]
    assert any((o.int() - image.int()).abs().max() > 3 for o in outs)  # brightness fires sometimes


def test_collate_pads_images_and_labels_independently():
    a = {"image": torch.full((3, 4, 5), 200, dtype=torch.uint8), "label": torch.zeros(4, 5, dtype=torch.long)}
    a["name"] = "a"
    b = {"image": torch.zeros(3, 6, 3, dtype=torch.uint8), "label": torch.ones(7, 2, dtype=torch.long), "name": "b"}
    batch = collate_semseg([a, b], ignore_label=65535)
    assert batch["images"].shape == (2, 3, 6, 5) and batch["images"].dtype == torch.float32
    assert batch["labels"].shape == (2, 7, 5) and batch["labels"].dtype == torch.int64
    assert torch.allclose(batch["images"][0, :, :4, :5], torch.tensor(200 / 255))
    assert torch.allclose(batch["images"][0, :, 4:], torch.tensor(128 / 255))
    assert (batch["labels"][0, 4:] == 65535).all() and (batch["labels"][1, :, 2:] == 65535).all()
    assert (batch["labels"][1, :7, :2] == 1).all()
    assert batch["names"] == ["a", "b"] and batch["image_sizes"] == [(4, 5), (6, 3)]
    with pytest.raises(ValueError):
        collate_semseg([])
