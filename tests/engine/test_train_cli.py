"""A 30-step pat_tiny run through `patseg train` on a generated dataset, then `patseg eval` (mIoU, rFID) on it."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from patseg.build import build_model
from patseg.cli import main
from patseg.evaluation.rfid import RFIDResult  # the real record; the module is replaced below
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig
from patseg.resources import load_class_names
from patseg.weights.files import save_weights


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
    args = [
        "train",
        "--set",
        "model.preset=pat_tiny",
        f"model.weights={tmp_path / 'init.safetensors'}",
        f"data.root={data_root}",
        "data.allow_partial=true",
        "data.crop_size=64",
        "data.workers=0",
        "solver.iters=30",
        "solver.batch_size=4",
        "solver.lr=1e-3",
        "solver.grad_clip=1.0",
        "checkpoint.period=15",
        "log.period=5",
        "log.image_period=15",
        "eval.period=1000",
        "eval.datasets=[]",
        f"output_dir={out}",
        "--resume",
    ]
    assert main(args) == 0
    assert f"patseg: warning: --resume: no checkpoint in {out}: starting from iteration 0" in capsys.readouterr().err
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
    code = main(
        [
            "eval",
            "--weights",
            str(ckpt),
            "--datasets",
            "coco_stuff_171",
            "--root",
            str(data_root),
            "--allow-partial",
            "--short-side",
            "64",
            "--out",
            str(tmp_path / "res"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "COCO-171" in printed and "mIoU_gt_or_pred" in printed
    table = json.loads((tmp_path / "res.json").read_text())
    assert set(table) == {"mIoU", "mIoU_gt_or_pred"}


def test_train_from_a_san_checkpoint_logs_what_it_loaded(tmp_path, data_root, capsys):
    san = tmp_path / "san_tiny.safetensors"
    save_weights(build_model("san_tiny"), san)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--set",
                "model.preset=pat_tiny",
                f"model.init_from={san}",
                f"data.root={data_root}",
                "data.allow_partial=true",
                "data.crop_size=64",
                "data.workers=0",
                "solver.iters=1",
                "solver.batch_size=2",
                "eval.datasets=[]",
                f"output_dir={out}",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"patseg: init_from {san}: loaded" in err and "pixel_branch" in err  # the fresh modules are named
    assert "model:\n  preset: pat_tiny" in (out / "config.yaml").read_text()
    assert f"init_from: {san}" in (out / "config.yaml").read_text()
    assert (
        main(
            [
                "-q",
                "train",
                "--set",
                "model.preset=pat_tiny",
                f"model.init_from={san}",
                f"data.root={data_root}",
                "data.allow_partial=true",
                "data.crop_size=64",
                "data.workers=0",
                "solver.iters=1",
                "solver.batch_size=2",
                "eval.datasets=[]",
                f"output_dir={tmp_path / 'quiet'}",
            ]
        )
        == 0
    )
    assert "init_from" not in capsys.readouterr().err  # -q: warnings and errors only


def test_train_refuses_missing_data_root(tmp_path, capsys):
    code = main(
        ["train", "--set", "model.preset=san_tiny", f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err


def test_train_refuses_missing_clip_weights(tmp_path, capsys):
    code = main(["train", "--set", "model.preset=san_vitb16", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "--clip-weights FILE" in err and "'ViT-B-16'" in err
    code = main(
        [
            "train",
            "--set",
            "model.preset=san_vitb16",
            f"output_dir={tmp_path}",
            "--clip-weights",
            str(tmp_path / "ViT-B-16.bin"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "ViT-B-16.bin" in err and "Traceback" not in err


def test_train_refuses_missing_lpips_weights(tmp_path, data_root, capsys):
    code = main(
        [
            "train",
            "--set",
            "model.preset=pat_tiny",
            "loss.perceptual_weight=0.1",
            f"data.root={data_root}",
            f"output_dir={tmp_path}",
            "--lpips-weights",
            str(tmp_path / "vgg16-397923af.pth"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "vgg16-397923af.pth" in err and "Traceback" not in err
    assert not (tmp_path / "config.yaml").exists()  # refused before training started


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "solver.lrr=1"], "'solver.lrr'"),
        (["--set", "model.preset=pat_tiny", "pat.vmff=false"], "'pat.vmff'"),
        (["--set", "solverr.lr=1"], "training keys start with"),
        (["--set", "solver.iters"], "'solver.iters' is not KEY=VALUE"),
        (["solver.iters=10"], "assignments go after --set: patseg train [CONFIG] --set solver.iters=10"),
        (["--set", "model.preset=pat_tiny", "data.crop_size=100"], "'data.crop_size' must be a multiple of 32"),
    ],
)
def test_train_config_errors_are_one_line(args, message, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("patseg: error: ") and message in err and len(err.splitlines()) == 1


class FakeRFID:
    """Stands in for ``patseg.evaluation.rfid`` (its Inception network needs a weights file)."""

    def __init__(self):
        self.calls = []

    def reconstruction_fid(
        self,
        model,
        dataset,
        *,
        inception_weights,
        short_side=640,
        crop=640,
        limit=None,
        batch_size=4,
        progress=True,
        device=None,
    ):
        self.calls.append(
            {
                "preset": model.config.name,
                "dataset": dataset.spec.name,
                "split": dataset.split,
                "inception_weights": inception_weights,
                "short_side": short_side,
                "crop": crop,
                "limit": limit,
            }
        )
        return RFIDResult(fid=12.5 + len(self.calls), num_images=min(limit or len(dataset), len(dataset)))


@pytest.fixture
def fake_rfid(monkeypatch):
    fake = FakeRFID()
    module = types.ModuleType("patseg.evaluation.rfid")
    module.reconstruction_fid = fake.reconstruction_fid
    monkeypatch.setitem(sys.modules, "patseg.evaluation.rfid", module)
    return fake


def test_eval_rfid_is_printed_and_stored(tmp_path, data_root, fake_rfid, capsys):
    weights = save_weights(build_model("pat_tiny"), tmp_path / "pat.safetensors")
    inception = tmp_path / "pt_inception.pth"
    inception.write_bytes(b"stand-in")
    code = main(
        [
            "eval",
            "--weights",
            str(weights),
            str(weights),
            "--seeds",
            "3",
            "4",
            "--datasets",
            "",
            "--root",
            str(data_root),
            "--allow-partial",
            "--short-side",
            "64",
            "--rfid",
            "--inception-weights",
            str(inception),
            "--out",
            str(tmp_path / "res"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "pat_tiny (seed 3): rFID = 13.50 (N = 3)" in printed and "pat_tiny (seed 4): rFID = 14.50 (N = 3)" in printed
    assert fake_rfid.calls[0] == {
        "preset": "pat_tiny",
        "dataset": "coco_stuff_171",
        "split": "val",
        "inception_weights": str(inception),
        "short_side": 64,
        "crop": 64,
        "limit": None,
    }
    record = json.loads((tmp_path / "res_seed4.json").read_text())
    assert record["rfid"] == {"value": 14.5, "num_images": 3}
    rfid = json.loads((tmp_path / "res.json").read_text())["mIoU"]["rows"][0]["rfid"]
    assert rfid["mean"] == pytest.approx(14.0) and rfid["n"] == 2  # mean over the two seeds


def test_eval_rfid_refuses_before_any_work(tmp_path, data_root, fake_rfid, capsys):
    san = save_weights(build_model("san_tiny"), tmp_path / "san.safetensors")
    inception = tmp_path / "pt_inception.pth"
    inception.write_bytes(b"stand-in")
    cases = [
        (["--weights", str(san), "--rfid"], "--rfid needs --inception-weights"),
        (["--weights", str(san), "--inception-weights", str(inception)], "only used with --rfid"),
        (["--weights", str(san), "--rfid", "--inception-weights", str(tmp_path / "none.pth")], "none.pth"),
        (["--weights", str(san), "--rfid", "--inception-weights", str(inception)], "'san_tiny' is SAN"),
    ]
    for args, message in cases:
        assert main(["eval", *args, "--datasets", "coco_stuff_171", "--root", str(data_root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("patseg: error: ") and message in err, (args, err)
    assert fake_rfid.calls == []


def _tiny_run(data_root, out, *extra):
    """A 2-step pat_tiny run logging every step (its tiny CLIP is random: the seed decides everything)."""
    return [
        "train",
        "--set",
        "model.preset=pat_tiny",
        f"data.root={data_root}",
        "data.allow_partial=true",
        "data.crop_size=64",
        "data.workers=0",
        "solver.iters=2",
        "solver.batch_size=2",
        "log.period=1",
        "checkpoint.period=1",
        "eval.datasets=[]",
        f"output_dir={out}",
        *extra,
    ]


def _losses(out):
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    return [(r["iteration"], r["loss/total"]) for r in map(json.loads, lines)]


def test_same_seed_gives_the_same_losses(tmp_path, data_root):
    torch.manual_seed(1)  # whatever the process did before must not matter
    assert main(_tiny_run(data_root, tmp_path / "a")) == 0
    torch.manual_seed(2)
    assert main(_tiny_run(data_root, tmp_path / "b")) == 0
    assert main(_tiny_run(data_root, tmp_path / "c", "solver.seed=7")) == 0
    a, b, c = (_losses(tmp_path / n) for n in "abc")
    assert [i for i, _ in a] == [1, 2]
    assert a == b
    assert a[0][1] != c[0][1]


def test_an_earlier_run_is_refused_before_any_work(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    assert main(_tiny_run(data_root, out)) == 0
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    assert main(_tiny_run(data_root, out, "solver.lr=1e-3")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"patseg: error: output_dir {out} already holds a training run (last_checkpoint, ")
    assert "pass --resume" in err and "choose another output_dir" in err and len(err.splitlines()) == 1
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched
    # --resume continues: the finished run has nothing left to do and logs no duplicate rows
    assert main([*_tiny_run(data_root, out), "--resume"]) == 0
    assert [i for i, _ in _losses(out)] == [1, 2]
    # a folder with only logs (a run stopped before its first checkpoint) is a run too
    (tmp_path / "logs_only" / "logs").mkdir(parents=True)
    (tmp_path / "logs_only" / "logs" / "metrics.jsonl").write_text('{"iteration": 1}\n')
    assert main(_tiny_run(data_root, tmp_path / "logs_only")) == 2
    assert "logs/metrics.jsonl" in capsys.readouterr().err


def test_resume_without_a_checkpoint_warns_even_when_quiet(tmp_path, data_root, capsys):
    out = tmp_path / "fresh"
    assert main(["-q", *_tiny_run(data_root, out), "--resume"]) == 0
    assert f"warning: --resume: no checkpoint in {out}: starting from iteration 0" in capsys.readouterr().err


def test_resume_trains_against_the_checkpoints_class_embeddings(tmp_path, data_root, monkeypatch):
    import patseg.cli.train as train_cli

    out = tmp_path / "run"
    assert main(_tiny_run(data_root, out)) == 0
    ckpt = out / "ckpt_0000002"
    names = list(load_class_names("coco_stuff_171"))
    with torch.no_grad():
        expected = build_model(None, weights=str(ckpt)).encode_vocabulary(names)
    seen = []
    build = train_cli.build_for_training

    def recording_build(cfg):
        model = build(cfg)
        losses = model.training_losses

        def training_losses(images, labels, class_embeddings, **kwargs):
            seen.append(class_embeddings.detach().clone())
            return losses(images, labels, class_embeddings, **kwargs)

        model.training_losses = training_losses
        return model

    monkeypatch.setattr(train_cli, "build_for_training", recording_build)
    # another seed: the freshly built (random) text tower differs from the checkpoint's
    assert main([*_tiny_run(data_root, out, "solver.iters=3", "solver.seed=5"), "--resume"]) == 0
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


def test_stray_assignment_after_resume_points_at_set(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "cfg.yaml"), "--resume", "solver.iters=10"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "patseg train: error: 'solver.iters=10' looks like an assignment" in err
    assert "--set solver.iters=10" in err and "usage: patseg train" in err


def test_paths_are_stored_absolute(tmp_path, data_root, monkeypatch):
    init = build_model("pat_tiny")
    save_weights(init, tmp_path / "init.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(_tiny_run(data_root, "out", "model.weights=init.safetensors", "solver.iters=1")) == 0
    text = (tmp_path / "out" / "config.yaml").read_text()
    assert f"weights: {tmp_path / 'init.safetensors'}" in text
