import numpy as np
import pytest
import torch
from PIL import Image

from patseg.data import (
    DATASETS,
    DatasetError,
    SemSegDataset,
    TrainTransform,
    build_dataset,
    data_root,
    get_dataset_spec,
    list_datasets,
)
from patseg.data.transforms import resize_image


def write_sample(root, name, stem, label, size=(6, 8), split="val"):
    spec = get_dataset_spec(name)
    layout = spec.split(split)
    (root / layout.image_dir).mkdir(parents=True, exist_ok=True)
    (root / layout.label_dir).mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(stem)).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / layout.image_dir / f"{stem}.jpg")
    Image.fromarray(label).save(root / layout.label_dir / f"{stem}{spec.label_ext}")


def test_registry_facts():
    counts = {n: s.splits["val"].expected_count for n, s in DATASETS.items()}
    assert counts == {
        "coco_stuff_171": 5000,
        "ade20k_150": 2000,
        "ade20k_847": 2000,
        "pcontext_59": 5104,
        "pcontext_459": 5104,
        "voc_20": 1449,
    }
    assert DATASETS["coco_stuff_171"].splits["train"].expected_count == 118287
    for spec in DATASETS.values():
        assert len(spec.class_names) == spec.num_classes
        assert spec.ignore_label == (65535 if spec.label_ext == ".tif" else 255)
    with pytest.raises(DatasetError, match="known"):
        get_dataset_spec("ade20k")
    with pytest.raises(DatasetError, match="no split .train."):
        DATASETS["voc_20"].split("train")


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PATSEG_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("PATSEG_DATA")
    assert str(data_root()) == "datasets"


def test_strict_loading_names_missing_files_and_count(tmp_path):
    label = np.zeros((6, 8), dtype=np.uint8)
    for stem in ("a", "b", "c"):
        write_sample(tmp_path, "ade20k_150", stem, label)
    layout = DATASETS["ade20k_150"].splits["val"]
    (tmp_path / layout.label_dir / "b.png").unlink()
    (tmp_path / layout.image_dir / "c.jpg").unlink()
    with pytest.raises(DatasetError) as info:
        SemSegDataset("ade20k_150", root=tmp_path)
    message = str(info.value)
    assert "1 labels have no image: c" in message
    assert "1 images have no label: b" in message
    assert "found 1 image/label pairs, expected 2000" in message
    with pytest.warns(UserWarning, match="images have no label: b"):
        ds = SemSegDataset("ade20k_150", root=tmp_path, allow_partial=True)
    assert len(ds) == 1 and ds.samples[0].name == "a"


def test_missing_folder_says_how_to_prepare(tmp_path):
    with pytest.raises(DatasetError, match="patseg prepare pcontext_59"):
        SemSegDataset("pcontext_59", root=tmp_path)


def test_items_png_and_uint16_tiff(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_DATA", str(tmp_path))
    tif = np.array([[0, 65535, 846, 3]] * 6, dtype=np.uint16).repeat(2, axis=1)
    write_sample(tmp_path, "ade20k_847", "x", tif)
    with pytest.warns(UserWarning):
        ds = SemSegDataset("ade20k_847", allow_partial=True)
    item = ds[0]
    assert item["name"] == "x"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 8)
    assert item["label"].dtype == torch.int64
    assert torch.equal(item["label"], torch.from_numpy(tif.astype(np.int64)))
    assert ds.ignore_label == 65535 and ds.num_classes == 847

    # VOC shares JPEGImages with other splits: extra images are not an error, only labels decide
    png = np.full((6, 8), 255, dtype=np.uint8)
    png[2:4] = 19
    write_sample(tmp_path, "voc_20", "2007_000033", png)
    extra = tmp_path / DATASETS["voc_20"].splits["val"].image_dir / "2007_999999.jpg"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(extra)
    with pytest.warns(UserWarning) as record:
        voc = SemSegDataset("voc_20", transform=lambda im, lab: (resize_image(im, (12, 16)), lab), allow_partial=True)
    assert "no label" not in str(record[0].message)
    item = voc[0]
    assert item["image"].shape == (3, 12, 16)
    assert torch.equal(item["label"], torch.from_numpy(png.astype(np.int64)))


def test_wrong_label_dtype_is_reported(tmp_path):
    write_sample(tmp_path, "ade20k_847", "y", np.zeros((6, 8), dtype=np.uint8))  # a PNG-style map saved as TIFF
    with pytest.warns(UserWarning):
        ds = SemSegDataset("ade20k_847", root=tmp_path, allow_partial=True)
    with pytest.raises(DatasetError, match="expected a 2-D uint16 map"):
        ds[0]


def test_build_dataset_opens_every_registered_name(tmp_path):
    for i, name in enumerate(list_datasets()):
        spec = get_dataset_spec(name)
        label = np.full((6, 8), i, dtype=np.dtype(spec.label_dtype))
        write_sample(tmp_path, name, f"s{i}", label)
        with pytest.warns(UserWarning, match="expected"):
            ds = build_dataset(name, "val", root=tmp_path, allow_partial=True)
        assert isinstance(ds, SemSegDataset) and ds.spec is spec and ds.split == "val" and len(ds) == 1
        assert ds[0]["name"] == f"s{i}" and torch.equal(ds[0]["label"], torch.full((6, 8), i))


def test_build_dataset_passes_the_split_and_the_transform(tmp_path):
    label = np.full((40, 48), 7, dtype=np.uint8)
    write_sample(tmp_path, "coco_stuff_171", "t", label, size=(40, 48), split="train")
    transform = TrainTransform(crop_size=32, short_sides=(40,), max_size=400, color_jitter=False, flip_prob=0.0)
    with pytest.warns(UserWarning, match="expected 118287"):
        ds = build_dataset("coco_stuff_171", "train", root=tmp_path, transform=transform, allow_partial=True)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and torch.equal(item["label"], torch.full((32, 32), 7))
    with pytest.raises(DatasetError, match="expected 118287"):
        build_dataset("coco_stuff_171", "train", root=tmp_path)  # strict by default


def test_build_dataset_errors_name_the_choices(tmp_path):
    with pytest.raises(DatasetError) as info:
        build_dataset("ade20k", "val", root=tmp_path)
    assert "unknown dataset 'ade20k'" in str(info.value)
    assert all(name in str(info.value) for name in list_datasets())
    with pytest.raises(DatasetError, match="'voc_20' has no split 'train'; its splits: val"):
        build_dataset("voc_20", "train", root=tmp_path)
    with pytest.raises(DatasetError, match="patseg prepare pcontext_59"):
        build_dataset("pcontext_59", "val", root=tmp_path)
