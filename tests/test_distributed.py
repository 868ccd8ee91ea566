"""Infinite sampler, torchrun detection and single-process reductions."""

from itertools import islice

import pytest
import torch

from patseg import distributed as D
from patseg.errors import UsageError


def _take(sampler, n):
    return list(islice(iter(sampler), n))


def test_sampler_epochs_are_permutations_and_differ():
    stream = _take(D.InfiniteSampler(10, seed=3), 30)
    epochs = [stream[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert _take(D.InfiniteSampler(10, seed=3), 30) == stream  # deterministic
    assert _take(D.InfiniteSampler(10, seed=4), 10) != epochs[0]
    assert _take(D.InfiniteSampler(10, seed=3, shuffle=False), 12) == list(range(10)) + [0, 1]


def test_ranks_interleave_the_global_stream():
    """A global batch of 6 on 3 ranks holds the same samples as on one rank, and a start resumes the stream."""
    world, per_rank = 3, 7
    global_stream = _take(D.InfiniteSampler(11, seed=0), world * per_rank)
    ranks = [_take(D.InfiniteSampler(11, seed=0, rank=r, world_size=world), per_rank) for r in range(world)]
    for k in range(per_rank):
        assert [ranks[r][k] for r in range(world)] == global_stream[k * world : (k + 1) * world]
    resumed = _take(D.InfiniteSampler(11, seed=0, rank=1, world_size=world, start=6), per_rank - 2)
    assert resumed == ranks[1][2:]
    with pytest.raises(ValueError, match="multiple"):
        D.InfiniteSampler(11, seed=0, world_size=3, start=4)


def test_detect_reads_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert D.detect() == D.DistInfo(0, 1, 0) and D.detect().is_main and not D.detect().enabled
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        D.detect()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = D.detect()
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.enabled) == (3, 4, 1, False, True)


def test_single_process_reductions_are_identities():
    t = torch.tensor([1.0, 2.0])
    out = D.all_reduce_mean(t)
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()
    assert D.all_gather_json({"a": [1, 2]}, torch.device("cpu")) == [{"a": [1, 2]}]
