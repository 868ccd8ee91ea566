"""Poly learning rate (g) and AdamW parameter groups (f)."""

import itertools
import math

import pytest
import torch
from torch import nn

from patseg.engine.schedule import PolySchedule, build_param_groups, poly_lr


def test_poly_lr_values():
    # SAN's released training log prints lr 9.9971e-05 at iteration 19 of 60k (poly, power 0.9).
    assert poly_lr(1e-4, 19, 60000) == pytest.approx(9.9971e-05, abs=5e-10)
    assert poly_lr(1e-4, 0, 120000) == 1e-4
    assert poly_lr(1e-4, 60000, 120000) == pytest.approx(1e-4 * 0.5**0.9, rel=1e-12)
    assert poly_lr(2.0, 3, 4, power=1.0) == pytest.approx(0.5)
    assert poly_lr(1e-4, 120000, 120000) == 0.0
    assert poly_lr(1e-4, 130000, 120000) == 0.0
    with pytest.raises(ValueError):
        poly_lr(1e-4, -1, 10)


def test_poly_lr_matches_naive_loop():
    base, n, power = 3e-4, 50, 0.9
    for it in range(n + 1):
        remaining = 1.0
        for _ in range(it):  # (1 - it/n) built step by step
            remaining -= 1.0 / n
        expected = base * math.pow(max(remaining, 0.0), power)
        assert poly_lr(base, it, n, power) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    lrs = [poly_lr(base, it, n) for it in range(n)]
    assert all(a > b for a, b in itertools.pairwise(lrs))


def test_poly_schedule_sets_every_group_and_round_trips():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=999.0)
    sched = PolySchedule(1e-3, 10)
    assert sched.apply(opt, 5) == pytest.approx(1e-3 * 0.5**0.9)
    assert [g["lr"] for g in opt.param_groups] == [sched.lr_at(5)] * 2
    other = PolySchedule(999.0, 1)
    other.load_state_dict(sched.state_dict())
    assert other == sched
    with pytest.raises(ValueError, match="keys"):
        other.load_state_dict({"base_lr": 1.0})
    with pytest.raises(ValueError, match="max_iters"):
        other.load_state_dict({"base_lr": 1.0, "max_iters": "10", "power": 0.9})


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.bn = nn.BatchNorm2d(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.query_embed = nn.Embedding(3, 4)
        self.positional_embedding = nn.Parameter(torch.zeros(5, 4))
        self.codebook = nn.Parameter(torch.zeros(8, 4))
        self.bg_embed = nn.Parameter(torch.zeros(4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.frozen_ln = nn.LayerNorm(4)
        self.frozen_ln.requires_grad_(False)


def test_param_groups_split_norms_and_embeddings():
    net = _Net()
    groups = build_param_groups(net, weight_decay=1e-4)
    by_name = {g["group"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay"}
    assert by_name["decay"]["weight_decay"] == 1e-4 and by_name["no_decay"]["weight_decay"] == 0.0
    decay = {n for n, _ in by_name["decay"]["params"]}
    no_decay = {n for n, _ in by_name["no_decay"]["params"]}
    assert decay == {"fc.weight", "fc.bias"}
    assert no_decay == {
        "ln.weight",
        "ln.bias",
        "gn.weight",
        "gn.bias",
        "bn.weight",
        "bn.bias",
        "pos_embed",
        "query_embed.weight",
        "positional_embedding",
        "codebook",
        "bg_embed",
    }
    decay_order = [n for n, _ in by_name["decay"]["params"]]
    opt = torch.optim.AdamW(groups, lr=1.0)  # (AdamW rewrites the group dicts in place)
    assert opt.param_groups[0]["param_names"] == decay_order
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_param_groups_need_trainable_parameters():
    with pytest.raises(ValueError, match="no trainable"):
        build_param_groups(nn.Linear(2, 2).requires_grad_(False), 1e-4)
