"""`patseg prepare` on tiny fake downloads in the official formats; labels are checked pixel by pixel."""

import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from patseg.cli import main
from patseg.data import DatasetError, SemSegDataset

RNG = np.random.default_rng(0)


def jpg(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def load(name, root):
    with pytest.warns(UserWarning, match="expected"):  # a fake download is far smaller than the real split
        ds = SemSegDataset(name, root=root, allow_partial=True)
    return {s.name: ds[i] for i, s in enumerate(ds.samples)}


def prepare(*args):
    return main(["prepare", *map(str, args), "--no-progress"])


def test_coco_stuff_182_to_171_resumable_and_corrupt_input(tmp_path, capsys):
    src, dst = tmp_path / "coco", tmp_path / "data"
    # stuffthingmap values: 0 person, 11 unused, 12 stop sign, 90 unused, 91 banner, 181 wood, 255 unlabelled
    raw = np.array([[0, 11, 12, 90], [91, 181, 255, 12], [0, 0, 181, 91]], dtype=np.uint8)
    expected = {0: 0, 11: 255, 12: 11, 90: 255, 91: 80, 181: 170, 255: 255}
    jpg(src / "val2017" / "000000000001.jpg", 3, 4)
    png(src / "stuffthingmaps" / "val2017" / "000000000001.png", raw)
    jpg(src / "val2017" / "000000000002.jpg", 3, 4)
    (src / "stuffthingmaps" / "val2017" / "000000000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    jpg(src / "val2017" / "000000000003.jpg", 3, 4)  # its label is missing

    assert prepare("coco_stuff_171", "--src", src, "--dst", dst, "--split", "val") == 1
    err = capsys.readouterr().err
    assert "skipped 000000000002" in err and "skipped 000000000003" in err
    items = load("coco_stuff_171", dst)
    assert sorted(items) == ["000000000001"]  # nothing written for the failed samples
    label = items["000000000001"]["label"].numpy()
    for y in range(raw.shape[0]):
        for x in range(raw.shape[1]):
            assert label[y, x] == expected[int(raw[y, x])]
    label_dir = dst / "coco" / "stuffthingmaps_detectron2" / "val2017"
    assert not any(p.name.startswith(".") for p in label_dir.iterdir())  # no temp files left

    # a second run skips the finished sample and writes the repaired one
    png(src / "stuffthingmaps" / "val2017" / "000000000002.png", raw)
    (src / "val2017" / "000000000003.jpg").unlink()
    before = (label_dir / "000000000001.png").stat().st_mtime_ns
    assert prepare("coco_stuff_171", "--src", src, "--dst", dst, "--split", "val") == 0
    assert "1 written, 1 already present, 0 failed" in capsys.readouterr().out
    assert (label_dir / "000000000001.png").stat().st_mtime_ns == before


def test_ade20k_150_shift_and_out_of_range(tmp_path, capsys):
    src, dst = tmp_path / "ADEChallengeData2016", tmp_path / "data"
    raw = np.array([[0, 1, 2], [150, 75, 0]], dtype=np.uint8)
    jpg(src / "images" / "validation" / "ADE_val_00000001.jpg", 2, 3)
    png(src / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    jpg(src / "images" / "validation" / "ADE_val_00000002.jpg", 2, 3)
    png(src / "annotations" / "validation" / "ADE_val_00000002.png", np.full((2, 3), 151, dtype=np.uint8))
    assert prepare("ade20k_150", "--src", src, "--dst", dst) == 1
    assert "value 151 outside 0..150" in capsys.readouterr().err
    label = load("ade20k_150", dst)["ADE_val_00000001"]["label"]
    assert label.tolist() == [[255, 0, 1], [149, 74, 255]]


def ade_seg_png(ids, jitter):
    """The ADE20K-2021 *_seg.png encoding: R = (id // 256) * 10 + jitter (0..9), G = id % 256, B = instances."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids // 256 * 10 + jitter
    rgb[..., 1] = ids % 256
    rgb[..., 2] = 7
    return rgb


def test_ade20k_847_decodes_rg_maps_ids_and_limits_short_side(tmp_path):
    src, dst = tmp_path / "ADE20K_2021_17_01", tmp_path / "data"
    scene = src / "images" / "ADE" / "validation" / "urban" / "street"
    # ADE ids -> trainIds (resources/classnames/ade20k_847_ids.tsv); 0 and 5000 are not among the 847 classes
    table = {2978: 0, 312: 1, 2420: 2, 3148: 846, 0: 65535, 5000: 65535}
    ids_small = np.array(list(table))[RNG.integers(0, len(table), (30, 40))]
    jpg(scene / "ADE_val_00000001.jpg", 30, 40)
    png(scene / "ADE_val_00000001_seg.png", ade_seg_png(ids_small, RNG.integers(0, 10, (30, 40))))
    # a large image: the shorter side 520 > 512 is brought to 512, the long side to round(700 * 512 / 520) = 689
    blocks = np.array(list(table))[RNG.integers(0, len(table), (52, 70))]
    ids_big = blocks.repeat(10, 0).repeat(10, 1)
    jpg(scene / "ADE_val_00000002.jpg", 520, 700)
    png(scene / "ADE_val_00000002_seg.png", ade_seg_png(ids_big, RNG.integers(0, 10, (520, 700))))

    assert prepare("ade20k_847", "--src", src, "--dst", dst) == 0
    items = load("ade20k_847", dst)
    small = items["ADE_val_00000001"]["label"].numpy()
    for y in range(30):
        for x in range(40):
            assert small[y, x] == table[int(ids_small[y, x])]
    big = items["ADE_val_00000002"]
    assert tuple(big["image"].shape) == (3, 512, 689) and tuple(big["label"].shape) == (512, 689)
    label = big["label"].numpy()
    for y in range(0, 512, 7):  # nearest neighbour: source index floor(dst * in / out)
        for x in range(0, 689, 5):
            sy, sx = min(int(y * 520 / 512), 519), min(int(x * 700 / 689), 699)
            assert label[y, x] == table[int(ids_big[sy, sx])], (y, x)
    with Image.open(dst / "ADE20K_2021_17_01" / "annotations_detectron2" / "validation" / "ADE_val_00000002.tif") as im:
        assert im.mode == "I;16"


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def write_context_json(voc2010, images, segments):
    voc2010.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annos_segmentation": segments, "categories": []}
    (voc2010 / "trainval_merged.json").write_text(json.dumps(data))


def test_pcontext_59_from_detail_rles(tmp_path):
    voc, dst = tmp_path / "VOC2010", tmp_path / "data"
    h, w = 5, 6
    m_aero = np.zeros((h, w), bool)
    m_aero[:3, :3] = True
    m_table = np.zeros((h, w), bool)
    m_table[2:, 2:] = True  # painted after aeroplane: wins on the overlap
    m_other = np.zeros((h, w), bool)
    m_other[4, :2] = True  # 459-id 1 (accordion) is not a PC-59 class
    m_wood = np.zeros((h, w), bool)
    m_wood[0, 5] = True
    images = [
        {"image_id": 2008000001, "file_name": "2008_000001.jpg", "height": h, "width": w, "phase": "val"},
        {"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": h, "width": w, "phase": "train"},
    ]
    segments = [
        {"image_id": 2008000001, "category_id": 2, "segmentation": rle(m_aero)},
        {"image_id": 2008000001, "category_id": 397, "segmentation": rle(m_table)},
        {"image_id": 2008000001, "category_id": 1, "segmentation": rle(m_other)},
        {"image_id": 2008000001, "category_id": 458, "segmentation": rle(m_wood)},
        {"image_id": 2008000002, "category_id": 2, "segmentation": rle(m_aero)},
    ]
    write_context_json(voc, images, segments)
    jpg(voc / "JPEGImages" / "2008_000001.jpg", h, w)
    jpg(voc / "JPEGImages" / "2008_000002.jpg", h, w)
    assert prepare("pcontext_59", "--src", voc, "--dst", dst) == 0
    items = load("pcontext_59", dst)
    assert sorted(items) == ["2008_000001"]  # the train image is not part of val
    label = items["2008_000001"]["label"].numpy()
    for y in range(h):
        for x in range(w):
            if m_wood[y, x]:
                want = 58
            elif m_other[y, x]:
                want = 255
            elif m_table[y, x]:
                want = 49  # diningtable
            elif m_aero[y, x]:
                want = 0
            else:
                want = 255  # background is ignored
            assert label[y, x] == want, (y, x)


def test_pcontext_459_labelmap_minus_one_as_uint16(tmp_path, capsys):
    voc, dst = tmp_path / "VOC2010", tmp_path / "data"
    images = [
        {"image_id": 2008000001 + i, "file_name": f"2008_00000{i + 1}.jpg", "height": 4, "width": 5, "phase": "val"}
        for i in range(2)
    ]
    write_context_json(voc, images, [])
    label_map = np.array([[1, 459, 0, 17, 300]] * 4, dtype=np.uint16)
    for i in range(2):
        jpg(voc / "JPEGImages" / f"2008_00000{i + 1}.jpg", 4, 5)
    (voc / "trainval").mkdir()
    scipy.io.savemat(voc / "trainval" / "2008_000001.mat", {"LabelMap": label_map})
    (voc / "trainval" / "2008_000002.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    assert prepare("pcontext_459", "--src", voc, "--dst", dst) == 1
    assert "skipped 2008_000002" in capsys.readouterr().err
    label = load("pcontext_459", dst)["2008_000001"]["label"]
    assert label.dtype == torch.int64
    assert label[0].tolist() == [0, 458, 65535, 16, 299]


def test_voc_background_to_ignore_from_palette_pngs(tmp_path):
    src, dst = tmp_path / "VOC2012", tmp_path / "data"
    raw = np.array([[0, 1, 2, 255], [20, 15, 0, 1]], dtype=np.uint8)
    (src / "ImageSets" / "Segmentation").mkdir(parents=True)
    (src / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    jpg(src / "JPEGImages" / "2007_000033.jpg", 2, 4)
    jpg(src / "JPEGImages" / "2007_000032.jpg", 2, 4)  # a train image: not copied
    palette_png = Image.fromarray(raw, mode="L").convert("P")
    palette_png.putdata(raw.ravel().tolist())
    (src / "SegmentationClass").mkdir()
    palette_png.save(src / "SegmentationClass" / "2007_000033.png")
    with Image.open(src / "SegmentationClass" / "2007_000033.png") as im:
        assert im.mode == "P"
    assert prepare("voc_20", "--src", src, "--dst", dst, "--workers", "2") == 0  # process-pool path
    items = load("voc_20", dst)
    assert sorted(items) == ["2007_000033"]
    assert items["2007_000033"]["label"].tolist() == [[255, 0, 1, 255], [19, 14, 255, 0]]
    assert not (dst / "VOC2012" / "JPEGImages" / "2007_000032.jpg").exists()


def test_missing_raw_folder_is_a_one_line_error(tmp_path, capsys):
    assert prepare("voc_20", "--src", tmp_path / "nowhere", "--dst", tmp_path / "d") == 2
    assert "expected: VOC2012 folder" in capsys.readouterr().err
    assert prepare("ade20k_150", "--src", tmp_path, "--dst", tmp_path / "d", "--split", "train") == 2


def truncated_jpg(path, h, w):
    jpg(path, h, w)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # a cut-off download: the header still opens


def test_truncated_jpeg_fails_and_uppercase_suffixes_are_converted(tmp_path, capsys, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as another library may have left it
    src, dst = tmp_path / "ADEChallengeData2016", tmp_path / "data"
    images, labels = src / "images" / "validation", src / "annotations" / "validation"
    label = np.ones((64, 64), dtype=np.uint8)
    truncated_jpg(images / "ADE_val_00000001.jpg", 64, 64)
    png(labels / "ADE_val_00000001.png", label)
    jpg(images / "ADE_val_00000002.JPG", 64, 64)
    png(labels / "ADE_val_00000002.PNG", label)
    jpg(images / "ADE_val_00000003.jpeg", 64, 64)
    png(labels / "ADE_val_00000003.png", label)
    assert prepare("ade20k_150", "--src", src, "--dst", dst) == 1
    captured = capsys.readouterr()
    assert "2 written, 0 already present, 1 failed" in captured.out
    assert (
        "skipped ADE_val_00000001: CorruptInputError: ADE_val_00000001.jpg: truncated or corrupt image" in captured.err
    )
    assert "Traceback" not in captured.err
    items = load("ade20k_150", dst)
    assert sorted(items) == ["ADE_val_00000002", "ADE_val_00000003"]
    assert items["ADE_val_00000002"]["label"].unique().tolist() == [0]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the flag is only held while decoding


def test_voc_finds_uppercase_and_jpeg_files(tmp_path):
    src, dst = tmp_path / "VOC2012", tmp_path / "data"
    (src / "ImageSets" / "Segmentation").mkdir(parents=True)
    (src / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000034\n")
    jpg(src / "JPEGImages" / "2007_000033.JPG", 2, 4)
    png(src / "SegmentationClass" / "2007_000033.PNG", np.ones((2, 4), dtype=np.uint8))
    jpg(src / "JPEGImages" / "2007_000034.jpeg", 2, 4)
    png(src / "SegmentationClass" / "2007_000034.png", np.ones((2, 4), dtype=np.uint8))
    assert prepare("voc_20", "--src", src, "--dst", dst) == 0
    assert sorted(load("voc_20", dst)) == ["2007_000033", "2007_000034"]


def test_truncated_prepared_image_is_a_dataset_error(tmp_path):
    from patseg.data.prepare.common import output_paths

    image, label = output_paths("ade20k_150", tmp_path, "val", "a")
    truncated_jpg(image, 64, 64)
    png(label, np.zeros((64, 64), dtype=np.uint8))
    with pytest.warns(UserWarning, match="expected"):
        ds = SemSegDataset("ade20k_150", root=tmp_path, allow_partial=True)
    with pytest.raises(DatasetError, match=r"a\.jpg is truncated or corrupt .*run `patseg prepare` again"):
        ds[0]


def test_partial_split_error_names_the_real_switches(tmp_path):
    with pytest.raises(DatasetError) as info:
        SemSegDataset("ade20k_150", root=prepared_ade(tmp_path))
    assert "data.allow_partial=true for `patseg train`, --allow-partial for `patseg eval`" in str(info.value)
    assert "allow_partial=True" not in str(info.value)


def prepared_ade(tmp_path):
    from patseg.data.prepare.common import output_paths

    image, label = output_paths("ade20k_150", tmp_path, "val", "a")
    jpg(image, 4, 4)
    png(label, np.zeros((4, 4), dtype=np.uint8))
    return tmp_path
