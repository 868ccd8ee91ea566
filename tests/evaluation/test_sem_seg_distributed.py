"""SemSegEvaluator sums its state over processes (two gloo processes on CPU)."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from patseg.evaluation import SemSegEvaluator


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rng = np.random.default_rng(rank)
    ev = SemSegEvaluator(4, 255)
    ev.update(rng.integers(0, 4, (5, 6)), rng.choice([0, 1, 2, 255], (5, 6)))
    metrics = ev.compute()
    if rank == 0:
        torch.save({"mIoU": metrics["mIoU"]}, out_file)
    dist.destroy_process_group()


@pytest.mark.slow  # two process start-ups take ~20 s on a busy 2-core machine
def test_compute_sums_over_processes(tmp_path):
    out = tmp_path / "out.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    single = SemSegEvaluator(4, 255)
    for rank in range(2):
        rng = np.random.default_rng(rank)
        single.update(rng.integers(0, 4, (5, 6)), rng.choice([0, 1, 2, 255], (5, 6)))
    assert got["mIoU"] == single.compute()["mIoU"]


def test_compute_reduces_through_all_reduce(monkeypatch):
    """Fast check of the wiring: a fake 2-process all_reduce adds another rank's matrix before the metrics."""
    other = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 5]])
    calls = []

    def fake_all_reduce(tensor, op=None):
        calls.append(tensor.shape)
        if tensor.shape == other.shape:
            tensor += other

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    ev = SemSegEvaluator(3, 255)
    ev.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    result = ev.compute()
    assert calls == [torch.Size([3, 3])]
    assert result["per_class"]["2"] == 100.0  # class 2 exists only in the other rank's pixels
    assert torch.equal(ev.confusion_matrix, torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 0]]))  # local state untouched
