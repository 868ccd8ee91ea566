"""Issue 4: a 30-step pat_tiny run through `patseg train` on a generated dataset, then `patseg eval` on it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from patseg.build import build_model
from patseg.weights.files import save_weights
from patseg.resources import load_class_names
from patseg.cli import main
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig


def _write_coco_layout(root, split, n, seed):
    """Synthetic scenes saved in COCO-Stuff's prepared layout; world concept i becomes COCO trainId i."""
    ds = SyntheticSegmentation(WorldConfig(), split, n, 64, seed)
    images = root / "coco" / f"{split}2017"
    labels = root / "coco" / "stuffthingmaps_detectron2" / f"{split}2017"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n):
        item = ds[i]
        Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(images / f"{i:012d}.jpg", quality=95)
        Image.fromarray(item["label"].numpy().astype(np.uint8)).save(labels / f"{i:012d}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _write_coco_layout(root, "train", 8, 0)
    _write_coco_layout(root, "val", 3, 1)
    return root


def _fixed_batch_loss(model, data_root):
    """Total training loss on the 8 training scenes, un-augmented, with the criterion's sampling seeded."""
    ds = SyntheticSegmentation(WorldConfig(), "train", 8, 64, 0)
    images = torch.stack([ds[i]["image"] for i in range(8)]).float() / 255
    labels = torch.stack([ds[i]["label"] for i in range(8)])
    names = list(load_class_names("coco_stuff_171"))
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        return float(model.training_losses(images, labels, model.encode_vocabulary(names)).total)


def test_train_30_steps_then_eval(tmp_path, data_root, capsys):
    init = build_model("pat_tiny")
    save_weights(init, tmp_path / "init.safetensors")
    out = tmp_path / "run"
    args = ["train", "model.preset=pat_tiny", f"model.weights={tmp_path / 'init.safetensors'}",
            f"data.root={data_root}", "data.allow_partial=true", "data.crop_size=64", "data.workers=0",
            "solver.iters=30", "solver.batch_size=4", "solver.lr=1e-3", "solver.grad_clip=1.0",
            "checkpoint.period=15", "log.period=5", "log.image_period=15", "eval.period=1000", "eval.datasets=[]",
            f"output_dir={out}"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss/total" in r]) == 6
    ckpt = out / (out / "last_checkpoint").read_text().strip()
    assert ckpt.name == "ckpt_0000030"
    assert list((out / "logs").glob("events.out.tfevents.*"))
    model = build_model(None, weights=str(ckpt))  # the tiny CLIP is random: frozen weights travel along
    assert model.config.name == "pat_tiny"
    before, after = _fixed_batch_loss(init, data_root), _fixed_batch_loss(model, data_root)
    assert after < 0.95 * before, (before, after)  # deterministic: same batch, same sampled points

    capsys.readouterr()
    code = main(["eval", "--weights", str(ckpt), "--datasets", "coco_stuff_171", "--root", str(data_root),
                 "--allow-partial", "--short-side", "64", "--out", str(tmp_path / "res")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "COCO-171" in printed and "mIoU_gt_or_pred" in printed
    table = json.loads((tmp_path / "res.json").read_text())
    assert set(table) == {"mIoU", "mIoU_gt_or_pred"}


def test_train_refuses_missing_data_root(tmp_path, capsys):
    code = main(["train", "model.preset=san_tiny", f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err


def test_train_refuses_missing_clip_weights(tmp_path, capsys):
    code = main(["train", "model.preset=san_vitb16", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.clip_weights" in err
    code = main(["train", "model.preset=san_vitb16", f"model.clip_weights={tmp_path / 'ViT-B-16.bin'}",
                 f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "ViT-B-16.bin" in err and "Traceback" not in err


def test_train_config_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "solver.lrr=1"]) == 2
    assert "solver.lrr" in capsys.readouterr().err
