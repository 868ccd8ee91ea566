"""`patseg segment`, `info`, `tokenize`/`detokenize` and `visualize` end to end on tiny models."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from patseg.build import build_model
from patseg.cli import main
from patseg.cli.segment import load_vocabulary
from patseg.errors import UsageError
from patseg.predictor import Segmenter
from patseg.tokenizer import load_pyramids
from patseg.weights.files import save_weights


@pytest.fixture(scope="module")
def pat_weights(tmp_path_factory):
    model = build_model("pat_tiny")
    path = tmp_path_factory.mktemp("w") / "pat_tiny.safetensors"
    save_weights(model, path)
    return path


def _write_images(folder):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.jpg")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (70, 90), dtype=np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((rng.integers(0, 65536, (70, 90))).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees -> the upright image is 90 x 70
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)
    (folder / "broken.jpg").write_bytes(b"not an image at all")


def test_segment_all_modes_and_reports_broken_file(tmp_path, pat_weights, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _write_images(src)
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(src),
            "--vocab",
            "sky, tree,road",
            "--weights",
            str(pat_weights),
            "--out",
            str(out),
            "--short-side",
            "64",
        ]
    )
    assert code == 1  # one image failed
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "not a readable image" in err
    for stem in ("rgb", "gray", "rgba", "deep16", "palette", "rotated"):
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        expected = (90, 70) if stem == "rotated" else (70, 90)
        assert labels.shape == expected, stem
        assert labels.max() < 3
        meta = json.loads((out / f"{stem}.json").read_text())
        assert meta["classes"] == ["sky", "tree", "road"]
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size[1] >= expected[0] and overlay.size[0] > expected[1]
    assert not (out / "broken_labels.png").exists()
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries


def test_segment_errors_are_one_line(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "x.jpg"), "--vocab", "a", "--out", str(tmp_path)])
    assert code == 2 and "give --preset" in capsys.readouterr().err
    code = main(
        [
            "segment",
            str(tmp_path / "x.jpg"),
            "--vocab-file",
            str(tmp_path / "none.txt"),
            "--preset",
            "san_tiny",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "none.txt" in capsys.readouterr().err
    code = main(
        [
            "segment",
            str(tmp_path / "x.jpg"),
            "--vocab",
            "a",
            "--weights",
            str(tmp_path / "w.safetensors"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "w.safetensors" in err and "Traceback" not in err


def test_info_json_counts(capsys):
    assert main(["info", "san_tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = build_model("san_tiny")
    assert info["total"] == sum(p.numel() for p in model.parameters())
    assert info["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert info["modules"]["side"]["trainable"] == sum(p.numel() for p in model.side.parameters())
    assert info["modules"]["bg_embed"]["trainable"] == model.bg_embed.numel()


def test_tokenize_detokenize_round_trip(tmp_path, pat_weights):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    tokens = tmp_path / "t.npz"
    assert (
        main(
            [
                "tokenize",
                str(tmp_path / "a.png"),
                "--weights",
                str(pat_weights),
                "--size",
                "64",
                "--set",
                "loss.vq_weight=0.5",
                "--out",
                str(tokens),
            ]
        )
        == 0
    )
    with np.load(tokens, allow_pickle=False) as data:
        assert data["0/early"].shape == (1, 16, 24) and data["0/late"].shape == (1, 4, 6)
        assert data["0/latent"].shape == (1, 4, 6)
    meta = load_pyramids(tokens)[1]
    assert meta["overrides"] == {"loss.vq_weight": 0.5} and meta["preset"] == "pat_tiny"  # detokenize rebuilds it
    assert main(["detokenize", str(tokens), "--out", str(tmp_path / "rec")]) == 0
    rec = np.asarray(Image.open(tmp_path / "rec" / "a_recon.png"))
    assert rec.shape == (64, 96, 3)


@pytest.mark.parametrize("command", ["tokenize", "visualize"])
def test_pat_only_commands_refuse_san(tmp_path, capsys, command):
    san = save_weights(build_model("san_tiny"), tmp_path / "san.safetensors")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    extra = ["--out", str(tmp_path / "out.npz")] if command == "tokenize" else ["--out", str(tmp_path / "viz")]
    assert main([command, str(tmp_path / "a.png"), "--weights", str(san), *extra]) == 2
    err = capsys.readouterr().err
    assert err == f"patseg: error: patseg {command} needs a PAT model; 'san_tiny' is SAN (no tokens)\n"


def test_visualize_writes_stage_figures(tmp_path, pat_weights):
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "v.png")
    assert (
        main(
            [
                "visualize",
                str(tmp_path / "v.png"),
                "--weights",
                str(pat_weights),
                "--size",
                "64",
                "--clusters",
                "3",
                "--out",
                str(tmp_path / "viz"),
            ]
        )
        == 0
    )
    for stage in ("early", "mid", "late"):
        assert (tmp_path / "viz" / f"{stage}.png").is_file()
        codes = np.asarray(Image.open(tmp_path / "viz" / f"codes_{stage}.png"))
        assert codes.ndim == 2


def test_segment_inputs_with_one_stem_get_distinct_outputs(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(src / "img.bmp")
    Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(src / "img.tif")
    out = tmp_path / "out"
    common = ["--vocab", "sky,tree", "--out", str(out), "--short-side", "32"]
    assert main(["segment", str(src), "--preset", "san_tiny", *common]) == 0
    assert "segmented 2 of 2 images" in capsys.readouterr().out
    for suffix, shape in (("bmp", (40, 50)), ("tif", (30, 60))):
        assert json.loads((out / f"img_{suffix}.json").read_text())["image"] == str(src / f"img.{suffix}")
        assert np.asarray(Image.open(out / f"img_{suffix}_labels.png")).shape == shape
    assert not (out / "img.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"img_{s}{end}" for s in ("bmp", "tif") for end in ("_labels.png", "_overlay.png", ".json")
    )


def test_text_embeddings_of_a_random_tower_are_not_cached_on_disk(tmp_path, pat_weights, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    common = [str(tmp_path / "a.png"), "--vocab", "sky,tree", "--out", str(tmp_path / "out"), "--short-side", "32"]
    assert main(["segment", *common, "--preset", "san_tiny"]) == 0
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    assert (
        main(["segment", *common, "--weights", str(pat_weights), "--overwrite"]) == 0
    )  # a tower loaded from a file: cached
    assert len(list((tmp_path / "cache" / "text").glob("*.safetensors"))) == 1


@pytest.mark.parametrize(
    ("vocab", "expected"),
    [
        (["--vocab", "sky,,tree"], "blank class name at position 2"),
        (["--vocab", "sky,tree,"], "blank class name at position 3"),
        (["--vocab", "sky, tree,sky,tree"], "repeats class names ('sky' at positions 1, 3; 'tree' at positions 2, 4)"),
        (["--vocab-file", "{file}"], "classes.txt (one class per line) has a blank class name at position 2"),
    ],
)
def test_segment_refuses_blank_and_repeated_class_names(tmp_path, capsys, vocab, expected):
    (tmp_path / "classes.txt").write_text("sky\n \ntree\n\n", encoding="utf-8")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    vocab = [v.format(file=tmp_path / "classes.txt") for v in vocab]
    code = main(["segment", str(tmp_path / "a.png"), *vocab, "--preset", "san_tiny", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_segment_accepts_trailing_blank_lines_in_a_vocabulary_file(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\ntree\n\n  \n", encoding="utf-8")
    args = argparse.Namespace(vocab=None, vocab_file=str(tmp_path / "classes.txt"), dataset=None)
    assert load_vocabulary(args) == ["sky", "tree"]


def test_segmenter_refuses_empty_images_and_bad_vocabularies():
    model = build_model("san_tiny")
    with pytest.raises(UsageError, match="repeats class names \\('a' at positions 1, 3\\)"):
        Segmenter(model, ["a", "b", " a "])
    with pytest.raises(UsageError, match="blank class name at position 2"):
        Segmenter(model, ["a", "  "])
    with pytest.raises(UsageError, match="is empty"):
        Segmenter(model, [])
    with pytest.raises(UsageError, match="one string"):
        Segmenter(model, "sky,tree")
    seg = Segmenter(model, [" a", "b"], short_side=32)
    assert seg.vocabulary == ["a", "b"]
    for shape in ((0, 5, 3), (5, 0, 3), (0, 0, 3)):
        with pytest.raises(UsageError, match="the image is empty"):
            seg.predict(np.zeros(shape, dtype=np.uint8))
        with pytest.raises(UsageError, match="the image is empty"):
            seg.scores(np.zeros(shape, dtype=np.uint8))
    assert seg.predict(np.zeros((1, 1, 3), dtype=np.uint8)).shape == (1, 1)
