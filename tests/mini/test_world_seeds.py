"""Seeded OVSS-mini worlds: seed 0 is the default world, other seeds are distinct, valid and renderable."""

import dataclasses

import numpy as np
import pytest

from patseg.config import ConfigError
from patseg.mini import clip_pretrain as cp
from patseg.mini.scenes import render_scene, scene_rng
from patseg.mini.world import COLOUR_TABLE, WorldConfig, make_world, world_hash

SEEDS = range(1, 21)


def test_seed_zero_is_the_default_world():
    assert make_world(0) == WorldConfig()
    assert world_hash(make_world(0)) == world_hash(WorldConfig()) == "1a79f05028b49f52"  # the README's world
    assert make_world(0).name == "ovss-mini-v1"


def test_seeded_worlds_are_deterministic_and_distinct():
    hashes = [world_hash(make_world(s)) for s in SEEDS]
    assert len(set(hashes) | {world_hash(WorldConfig())}) == len(hashes) + 1
    assert world_hash(make_world(3)) == hashes[2]  # same seed, same world
    assert world_hash(make_world(1)) == "c5d5d43f1e6fd253"  # pinned: a changed draw changes every cache name
    with pytest.raises(ValueError):
        make_world(-1)


def test_colour_table_is_distinct():
    assert len({c.name for c in COLOUR_TABLE}) == len({c.rgb for c in COLOUR_TABLE}) == len(COLOUR_TABLE)


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_world_is_valid(seed):
    world = make_world(seed)
    assert world.name == f"ovss-mini-v1-seed{seed}"
    assert WorldConfig.from_dict(world.to_dict()) == world  # round-trips, so validate_world ran on it
    assert 0.15 <= len(world.unseen) / len(world.concept_names) <= 0.3
    seen_words = {w for n in world.seen_names for w in n.split()}
    assert all(w in seen_words for n in world.unseen_names for w in n.split())
    rgbs = {c.name: c.rgb for c in COLOUR_TABLE}
    assert all(rgbs[c.name] == c.rgb for c in world.colours)
    for spec in world.stuff:  # coloured patterns use the world's own colour for their colour word
        if spec.pattern in ("stripes", "dots"):
            colour, pattern = spec.name.split()
            assert pattern == spec.pattern and rgbs[colour] == spec.primary
            assert colour in {c.name for c in world.colours}


@pytest.mark.parametrize("seed", [1, 7, 13, 20])
def test_seeded_world_renders_every_concept(seed):
    world = make_world(seed)
    seen: set[int] = set()
    for index in range(200):
        scene = render_scene(world, scene_rng(0, "reach", index), 64)
        assert scene.image.shape == (64, 64, 3) and scene.label.max() < len(world.concept_names)
        seen.update(scene.present)
        if len(seen) == len(world.concept_names):
            break
    assert seen == set(range(len(world.concept_names)))


def test_unseen_words_must_be_seen():
    with pytest.raises(ConfigError, match="no seen concept"):
        dataclasses.replace(WorldConfig(), unseen=("brick wall",))


def test_seeded_world_pretrains_into_its_own_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path))
    world = make_world(5)
    assert cp.shipped_mini_clip(world) is None  # the shipped CLIP is the default world's only
    weights = cp.load_or_pretrain_mini_clip(world, steps=1, batch_size=2, eval_scenes=4)
    assert weights == tmp_path / "mini_clip" / world_hash(world) / cp.WEIGHTS_FILE
    assert world_hash(world) != world_hash(WorldConfig())
    meta = cp.read_metadata(weights)
    assert meta["world_hash"] == world_hash(world) and WorldConfig.from_dict(meta["world"]) == world

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache must not be retrained")

    monkeypatch.setattr(cp, "pretrain_mini_clip", no_training)
    assert cp.load_or_pretrain_mini_clip(world, steps=50) == weights
    assert np.isfinite(meta["final_loss"])
