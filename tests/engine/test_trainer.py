"""The train loop: bitwise kill-and-resume (b), poisoned-optimizer resume (c), accumulation, logging, errors."""

import json

import pytest
import torch
from engine_toys import CLASS_NAMES, ToyDataset, ToyModel, collate
from safetensors.torch import load_file

from patseg.config import ConfigError
from patseg.engine.checkpoint import read_state
from patseg.engine.schedule import poly_lr
from patseg.engine.train_config import train_config_from_dict
from patseg.engine.trainer import train


class _Killed(Exception):
    pass


def _cfg(out, **solver):
    solver = {"iters": 6, "batch_size": 4, "grad_accum": 2, "lr": 1e-2, **solver}
    return train_config_from_dict(
        {
            "output_dir": str(out),
            "solver": solver,
            "data": {"workers": 0},
            "checkpoint": {"period": 3, "keep_last": 5},
            "log": {"period": 1, "image_period": 2},
            "eval": {"period": 3},
        }
    )


def _noisy_eval(model, iteration):
    return {"ade20k_150": {"mIoU": float(torch.rand(()))}, "draws": float(torch.randn(5).sum())}


def _kill_at(k):
    def evaluate(model, iteration):
        _noisy_eval(model, iteration)
        if iteration == k:
            raise _Killed
        return {}

    return evaluate


def _run(out, *, workers=0, evaluate=_noisy_eval, resume=False, model_seed=0, **solver):
    cfg = _cfg(out, **solver)
    cfg.data.workers = workers
    torch.manual_seed(model_seed)
    return train(
        cfg,
        ToyModel(dropout=0.2),
        ToyDataset(augment=True, ignore=True),
        CLASS_NAMES,
        evaluate=evaluate,
        resume=resume,
        collate_fn=collate,
    )


def _tensors(folder):
    return {**load_file(folder / "model.safetensors"), **load_file(folder / "optim.safetensors")}


@pytest.mark.parametrize("workers", [0, 1])
def test_kill_and_resume_is_bitwise(tmp_path, workers):
    """Dropout, random flips (in the main process or a worker) and a random-drawing evaluator all replay exactly."""
    full = _run(tmp_path / "full", workers=workers)
    with pytest.raises(_Killed):
        _run(tmp_path / "killed", workers=workers, evaluate=_kill_at(3))
    assert sorted(p.name for p in (tmp_path / "killed").glob("ckpt_*")) == ["ckpt_0000003"]
    torch.manual_seed(1234)  # a new "process": different init and global RNG, all overwritten by the resume
    resumed = _run(tmp_path / "killed", workers=workers, resume=True, model_seed=99)
    assert resumed.iteration == full.iteration == 6
    assert resumed.losses == full.losses
    a, b = _tensors(full.checkpoint), _tensors(resumed.checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_state(resumed.checkpoint)[0].rng == read_state(full.checkpoint)[0].rng
    start = _tensors(tmp_path / "killed" / "ckpt_0000003")
    assert not torch.equal(start["conv.weight"], a["conv.weight"])  # training moved the weights after step 3


def test_poisoned_optimizer_resume(tmp_path):
    """detectron2's test: a resume built with a wrong lr still runs the checkpoint's schedule."""
    full = _run(tmp_path / "full")
    with pytest.raises(_Killed):
        _run(tmp_path / "run", evaluate=_kill_at(3))
    resumed = _run(tmp_path / "run", resume=True, lr=999.0)
    assert resumed.iteration == 6
    assert resumed.lr == pytest.approx(poly_lr(1e-2, 5, 6))
    state, _ = read_state(resumed.checkpoint)
    assert state.iteration == 6 and state.schedule["base_lr"] == 1e-2 and state.sampler_position == 24
    a, b = _tensors(full.checkpoint), _tensors(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_loads_initial_weights(tmp_path):
    first = _run(tmp_path / "first", iters=3)
    cfg = _cfg(tmp_path / "second", iters=3)
    cfg.model.weights = str(first.checkpoint)
    model = ToyModel()
    cfg.solver.lr = 1e-12  # with a negligible lr the weights stay where they were loaded
    result = train(cfg, model, ToyDataset(), CLASS_NAMES, resume=True, collate_fn=collate)
    assert result.iteration == 3
    loaded = load_file(first.checkpoint / "model.safetensors")["conv.weight"]
    assert torch.allclose(model.conv.weight, loaded, atol=1e-9)


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """2 micro-batches of 2 == 1 batch of 4: the loss is a mean over equal-size batches (no ignore, no dropout)."""
    results = []
    for accum in (1, 2):
        cfg = _cfg(tmp_path / f"accum{accum}", iters=3, grad_accum=accum)
        torch.manual_seed(0)
        results.append(train(cfg, ToyModel(), ToyDataset(), CLASS_NAMES, collate_fn=collate).checkpoint)
    a, b = load_file(results[0] / "model.safetensors"), load_file(results[1] / "model.safetensors")
    assert (a["steps_seen"], b["steps_seen"]) == (3, 6)  # forward calls: one vs two per step
    for key in set(a) - {"steps_seen"}:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    assert (ToyModel().conv.weight - a["conv.weight"]).abs().max() > 1e-3  # it did train


def test_logs_every_term_and_images(tmp_path):
    result = _run(tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "lr" in x]
    assert [x["iteration"] for x in train_lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss/loss_ce", "loss/loss_reg", "loss/total", "stats/mean_act", "grad_norm", "time/iter"} <= set(
        train_lines[0]
    )
    assert [x["lr"] for x in train_lines] == pytest.approx([poly_lr(1e-2, i, 6) for i in range(6)])
    last = train_lines[-1]
    assert last["loss/total"] == pytest.approx(last["loss/loss_ce"] + last["loss/loss_reg"])
    assert result.losses["total"] == pytest.approx(last["loss/total"])
    eval_lines = [x for x in lines if "eval/ade20k_150/mIoU" in x]
    assert [x["iteration"] for x in eval_lines] == [3, 6]
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_resume_drops_the_log_rows_written_after_its_checkpoint(tmp_path):
    """A run killed at step 5 logged 4 and 5 after its checkpoint at 3: the resume logs them once, again."""
    with pytest.raises(_Killed):
        _run(tmp_path / "run", evaluate=_kill_at(3))
    metrics = tmp_path / "run" / "logs" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"iteration": 4, "lr": 0.1}\n{"iteration": 5, "lr": 0.1}\n{"iterat')  # the kill cut the last row
    _run(tmp_path / "run", resume=True)
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["iteration"] for x in lines if "lr" in x] == [1, 2, 3, 4, 5, 6]
    assert 0.1 not in [x["lr"] for x in lines if "lr" in x]


def test_batch_must_split_over_ranks_and_accumulation(tmp_path):
    with pytest.raises(ConfigError, match="'solver.batch_size'"):
        train(_cfg(tmp_path, batch_size=5), ToyModel(), ToyDataset(), CLASS_NAMES, collate_fn=collate)


def test_non_finite_loss_stops_training(tmp_path):
    class Exploding(ToyModel):
        def training_losses(self, *args, **kwargs):
            out = super().training_losses(*args, **kwargs)
            out.losses["loss_ce"] = out.losses["loss_ce"] * float("nan")
            return out

    with pytest.raises(FloatingPointError, match="iteration 0"):
        train(_cfg(tmp_path), Exploding(), ToyDataset(), CLASS_NAMES, collate_fn=collate)


def test_eval_metrics_must_be_numbers(tmp_path):
    with pytest.raises(TypeError, match="per_class"):
        train(
            _cfg(tmp_path, iters=3),
            ToyModel(),
            ToyDataset(),
            CLASS_NAMES,
            collate_fn=collate,
            evaluate=lambda m, i: {"per_class": [1.0, 2.0]},
        )
