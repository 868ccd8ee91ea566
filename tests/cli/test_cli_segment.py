"""`patseg segment`, `info`, `tokenize`/`detokenize` and `visualize` end to end on tiny models."""

import json

import numpy as np
import pytest
from PIL import Image

from patseg.build import build_model
from patseg.cli import main
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
        assert data["0/early"].shape == (1, 8, 12) and data["0/late"].shape == (1, 2, 3)
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
