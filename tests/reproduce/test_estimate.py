"""The cost model of `patseg reproduce --dry-run`: the arithmetic, the saved-activation count, the cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from patseg.config import load_preset
from patseg.reproduce import estimate
from patseg.reproduce.estimate import EstimateCache, RunCost, StepCost, cache_key, saved_activation_bytes


def test_run_cost_arithmetic():
    step = StepCost(2e12, activation_bytes=10**9, trainable_params=20_000_000, frozen_params=150_000_000, seconds=1)
    cost = RunCost(step, iters=120_000, global_batch=12, gpus=3, gpu_tflops=71, mfu=0.35)
    assert cost.total_flops == pytest.approx(2e12 * 12 * 120_000)  # batch-1 step x global batch x iterations
    assert cost.gpu_hours == pytest.approx(2.88e18 / (71e12 * 0.35) / 3600)  # 32.2 GPU-hours, whatever the GPUs
    assert cost.wall_hours == pytest.approx(cost.gpu_hours / 3)
    assert cost.per_gpu_batch == 4
    # float32 weight, gradient and two AdamW moments per trainable parameter; a weight per frozen one
    assert cost.state_bytes == 16 * 20_000_000 + 4 * 150_000_000
    assert cost.memory_bytes == cost.state_bytes + 4 * 10**9
    one_gpu = RunCost(step, iters=120_000, global_batch=12, gpus=1, gpu_tflops=71, mfu=0.35)
    assert one_gpu.gpu_hours == pytest.approx(cost.gpu_hours) and one_gpu.memory_bytes == cost.state_bytes + 12 * 10**9


def test_saved_activations_count_each_storage_once_and_leave_out_weights_and_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.randn(8, 10)

    def step() -> None:
        model(x).sum().backward()

    # ReLU saves its output (8 x 20 float32), which the second Linear saves again as its input; the weights and
    # x existed before the step.
    assert saved_activation_bytes(step) == 8 * 20 * 4
    wide = torch.randn(32, 10)
    assert saved_activation_bytes(lambda: model(wide).sum().backward()) == 32 * 20 * 4  # linear in the batch


def test_the_cache_keys_on_the_resolved_model_and_survives_a_restart(tmp_path, monkeypatch):
    base = load_preset("pat_tiny")
    assert cache_key(base, 64) == cache_key(load_preset("pat_tiny"), 64)
    assert cache_key(base, 64) != cache_key(load_preset("pat_tiny", {"pat.vmf": False}), 64)
    assert cache_key(base, 64) != cache_key(base, 128)
    calls = []

    def fake(model, crop):
        calls.append((model.name, crop))
        return StepCost(1e9, 10**6, 10, 20, seconds=3.0)

    monkeypatch.setattr(estimate, "measure_step", fake)
    cache = EstimateCache(tmp_path / "estimates.json")
    assert cache.step_cost(base, 64, "pat_tiny") == (StepCost(1e9, 10**6, 10, 20, 3.0), False)
    assert cache.step_cost(load_preset("pat_tiny"), 64, "pat_tiny") == (StepCost(1e9, 10**6, 10, 20, 3.0), True)
    again = EstimateCache(tmp_path / "estimates.json")  # a second dry run reads the file
    assert again.step_cost(base, 64, "pat_tiny")[1] and calls == [("pat_tiny", 64)]
    (tmp_path / "estimates.json").write_text("{not json")
    assert EstimateCache(tmp_path / "estimates.json").get(cache_key(base, 64)) is None  # damaged: measured again
    assert json.loads(json.dumps(again.entries))  # plain JSON


def test_measure_step_counts_forward_and_backward_of_a_real_tiny_step():
    import torch.nn.functional as F

    from patseg.bench.measure import count_flops
    from patseg.build import build_model

    cost = estimate.measure_step(load_preset("san_tiny"), 64)
    assert cost.trainable_params == 327_106 and cost.frozen_params > 0 and cost.activation_bytes > 0
    torch.manual_seed(0)
    model = build_model("san_tiny").train()
    images = torch.rand(1, 3, 64, 64)
    labels = torch.randint(0, 171, (1, 64, 64))
    embeddings = F.normalize(torch.randn(171, model.clip.out_dim), dim=-1)
    with torch.no_grad():
        forward = count_flops(lambda: model.training_losses(images, labels, embeddings))
    # backward is counted: up to twice the forward where weights train, once where only inputs need gradients, and
    # nothing for what runs without gradients (san_tiny at 64: 1.35x)
    assert 1.2 < cost.flops / forward < 3
