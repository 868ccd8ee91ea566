"""`patseg segment` on folders: background decoding and batches give the one-at-a-time outputs, unreadable files are
skipped and named, and `torchrun` processes write each output exactly once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patseg.cli import main
from patseg.demo.shipped import SHIPPED_DIR, mini_clip_file
from patseg.images import read_rgb
from patseg.predictor import Segmenter

SRC = Path(__file__).parents[2] / "src"
# The shipped SAN-tiny demo model is trained: it gives block images several classes, so equal labels mean something.
MODEL = ["--weights", str(SHIPPED_DIR / "san_tiny.safetensors"), "--clip-weights", str(mini_clip_file())]
VOCAB = ["--vocab", "sky,tree,road,car,grass"]
# Input sizes at short side 64: 64x96 (three 70x90 and one 64x96), 96x64, 64x64.
SIZES = [(70, 90), (70, 90), (64, 96), (90, 70), (50, 50), (70, 90), (70, 90)]


def _folder(path: Path, *, broken: bool = False) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        cells = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3))
        Image.fromarray(np.kron(cells, np.ones((10, 10, 1)))[:h, :w].astype(np.uint8)).save(path / f"img{i}.png")
    if broken:
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(path / "img3b.jpg")
        (path / "img3b.jpg").write_bytes((path / "img3b.jpg").read_bytes()[:150])  # truncated mid-file
    return path


def _segment(src: Path, out: Path, *extra: str) -> int:
    return main(["segment", str(src), *MODEL, *VOCAB, "--out", str(out), "--short-side", "64", *extra])


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*_labels.png"))}


def _assert_same_outputs(a: Path, b: Path) -> None:
    """The same files; equal class names and sizes; labels equal up to rounding (>= 99.9% of the pixels)."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.glob("*.json"):
        assert json.loads(p.read_text()) == json.loads((b / p.name).read_text())
    la, lb = _labels(a), _labels(b)
    for name in la:
        assert la[name].shape == lb[name].shape and (la[name] == lb[name]).mean() >= 0.999, name


def test_batched_folder_gives_the_sequential_outputs(tmp_path, capsys):
    src = _folder(tmp_path / "in")
    assert _segment(src, tmp_path / "seq", "--batch-size", "1", "--workers", "0") == 0
    assert _segment(src, tmp_path / "w0", "--batch-size", "3", "--workers", "0") == 0
    assert _segment(src, tmp_path / "w2", "--batch-size", "3", "--workers", "2") == 0
    assert capsys.readouterr().out.count(f"segmented {len(SIZES)} of {len(SIZES)} images") == 3
    seq = _labels(tmp_path / "seq")
    assert sum(len(np.unique(labels)) > 1 for labels in seq.values()) >= 3  # several classes: not a trivial case
    # The sequential run is Segmenter.predict's, image by image.
    from patseg.demo.shipped import load_shipped

    segmenter = Segmenter(load_shipped()["SAN-tiny"], VOCAB[1].split(","), short_side=64)
    for i in range(len(SIZES)):
        assert np.array_equal(seq[f"img{i}_labels.png"], segmenter.predict(read_rgb(src / f"img{i}.png")))
    _assert_same_outputs(tmp_path / "seq", tmp_path / "w0")
    # Decoding in workers changes nothing at all: the same groups, byte for byte the same files.
    for p in (tmp_path / "w0").iterdir():
        assert p.read_bytes() == (tmp_path / "w2" / p.name).read_bytes(), p.name


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_file_in_a_folder_is_named_and_skipped(tmp_path, capsys, workers):
    src = _folder(tmp_path / "in", broken=True)
    out = tmp_path / "out"
    assert _segment(src, out, "--workers", workers, "--batch-size", "2") == 1
    captured = capsys.readouterr()
    assert "img3b.jpg" in captured.err and "warning: skipped" in captured.err
    assert f"segmented {len(SIZES)} of {len(SIZES) + 1} images into {out}; 1 failed" in captured.out
    assert sorted(_labels(out)) == sorted(f"img{i}_labels.png" for i in range(len(SIZES)))
    assert not list(out.glob("img3b*")) and not list(out.glob(".*tmp"))


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "patseg"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_two_processes_write_each_output_once(tmp_path, capsys):
    src = _folder(tmp_path / "in", broken=True)
    assert _segment(src, tmp_path / "single", "--batch-size", "2", "--workers", "0") == 1
    capsys.readouterr()
    out = tmp_path / "ddp"
    args = ["segment", str(src), *MODEL, *VOCAB, "--out", str(out), "--short-side", "64", "--batch-size", "2"]
    done = _torchrun("-v", *args, "--workers", "1")
    assert done.returncode != 0, done.stderr[-3000:]  # the truncated file fails on its rank: exit code 1
    assert str(SRC / "patseg") not in done.stderr, done.stderr[-3000:]  # no patseg frame: torchrun's own only
    assert done.stdout.count("segmented") == 1, done.stdout  # one summary, counting both processes
    assert f"segmented {len(SIZES)} of {len(SIZES) + 1} images into {out}; 1 failed" in done.stdout
    assert "img3b.jpg" in done.stderr
    writers = re.findall(r"patseg(?: \(rank (\d)\))?: wrote (\S+)\n", done.stderr)  # rank 0: after tqdm's \r
    assert sorted(stem for _, stem in writers) == sorted(f"img{i}" for i in range(len(SIZES)))  # each once
    assert {rank for rank, _ in writers} == {"", "1"}  # both ranks wrote
    _assert_same_outputs(tmp_path / "single", out)

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _torchrun(*args)
    assert again.returncode != 0 and "already exist from an earlier run" in again.stderr, again.stderr[-3000:]
    assert str(SRC / "patseg") not in again.stderr, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing replaced


def test_precision_is_used_for_every_batch_and_refused_where_unsupported(tmp_path, monkeypatch, capsys):
    """--precision int8 quantizes the model the batches run through; a mode the CPU lacks stops before any work."""
    import torch

    from patseg import precision

    src = _folder(tmp_path / "in")
    seen = []
    original = Segmenter.predict_batch

    def spy(self, images):
        seen.append(
            (self.precision, any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in self.model.modules()))
        )
        return original(self, images)

    monkeypatch.setattr(Segmenter, "predict_batch", spy)
    assert _segment(src, tmp_path / "int8", "--precision", "int8", "--workers", "0") == 0
    assert seen and all(seen_one == ("int8", True) for seen_one in seen)
    assert len(list((tmp_path / "int8").glob("*_labels.png"))) == len(SIZES)

    monkeypatch.setattr(precision, "_cpu_capabilities", lambda: {})  # a CPU without bfloat16 arithmetic
    assert _segment(src, tmp_path / "bf16", "--precision", "bf16") == 2
    assert "bfloat16" in capsys.readouterr().err and not (tmp_path / "bf16").exists()
