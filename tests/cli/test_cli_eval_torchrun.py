"""`torchrun -m patseg eval` on two CPU processes gives the metrics of one process: each rank evaluates its share of
the images and the confusion matrices are summed (``patseg reproduce --gpus N`` evaluates this way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from patseg.build import build_model
from patseg.cli import main
from patseg.data.prepare.common import write_label
from patseg.data.registry import get_dataset_spec
from patseg.predictor import Segmenter
from patseg.reproduce.tiny import write_split
from patseg.weights.files import save_weights

SRC = Path(__file__).parents[2] / "src"


def _labels_from_the_model(root: Path, model, images: int) -> None:
    """Replace the labels of pcontext_59/val: images 0 and 2 get the model's own prediction, image 1 a shifted one,
    so that rank 0 of two (images 0 and 2) alone would score 100 and the whole set scores less."""
    spec = get_dataset_spec("pcontext_59")
    layout = spec.split("val")
    segmenter = Segmenter(model, list(spec.class_names), short_side=64)
    for i in range(images):
        with Image.open(root / layout.image_dir / f"{i:06d}.jpg") as image:
            pred = segmenter.predict(np.asarray(image.convert("RGB")))
        label = pred if i % 2 == 0 else (pred + 1) % spec.num_classes
        write_label(root / layout.label_dir / f"{i:06d}.png", label.astype(np.uint8))


def test_two_processes_report_the_metrics_of_one(tmp_path, capsys):
    root = tmp_path / "data"
    write_split(root, "pcontext_59", "val", 3, 64, seed=1)
    torch.manual_seed(0)
    model = build_model("san_tiny").eval()
    weights = save_weights(model, tmp_path / "san_tiny.safetensors")
    _labels_from_the_model(root, model, 3)
    common = ["--weights", str(weights), "--datasets", "pcontext_59", "--root", str(root), "--allow-partial"]
    common += ["--short-side", "64"]
    assert main(["eval", *common, "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "patseg"]
    done = subprocess.run(
        [*command, "eval", *common, "--out", str(tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    single = json.loads((tmp_path / "single_seed0.json").read_text())["datasets"]["pcontext_59"]
    ddp = json.loads((tmp_path / "ddp_seed0.json").read_text())["datasets"]["pcontext_59"]
    assert 0 < single["pACC"] < 100  # images 0 and 2 right, image 1 wrong
    for key in ("mIoU", "mIoU_gt_or_pred", "fwIoU", "mACC", "pACC"):
        assert ddp[key] == single[key], key
    assert done.stdout.count("| san_tiny |") == 2  # one process prints the two tables
