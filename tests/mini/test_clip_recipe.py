"""Mini CLIP pretraining additions: one-word hard negatives, their loss term, and the single-concept measure."""

import math

import numpy as np
import pytest
import torch

from patseg.mini import clip_pretrain as cp
from patseg.mini.world import WorldConfig

WORLD = WorldConfig()


def _listed(caption: str) -> list[str]:
    return caption[len("a photo of ") : -1].replace(" and ", ", ").split(", ")


def test_one_word_swaps():
    names = WORLD.concept_names
    swaps = cp._one_word_swaps(names)
    got = {names[j] for j in swaps[names.index("red circle")]}
    assert {"blue circle", "red square", "red stripes"} <= got and "blue square" not in got
    assert swaps[names.index("brick wall")] == [] and "red circle" not in got


def test_hard_negatives_are_wrong_by_one_concept():
    model = cp.create_mini_clip()
    batch = cp.sample_views(WORLD, np.random.default_rng(3), model, 12, hard_negatives=True)
    assert batch.negatives is not None and len(batch.negatives) == 12
    for caption, negative, row in zip(batch.captions, batch.negatives, batch.targets):
        true, wrong = _listed(caption), _listed(negative)
        changed = [(a, b) for a, b in zip(true, wrong) if a != b]
        assert len(true) == len(wrong) and len(changed) == 1
        present = {WORLD.concept_names[k] for k in torch.nonzero(row).flatten().tolist()}
        assert changed[0][1] not in present
    assert cp.sample_views(WORLD, np.random.default_rng(3), model, 2).negatives is None


def test_contrastive_loss_with_negatives_matches_loops():
    img, txt, neg = (torch.nn.functional.normalize(torch.randn(n, 6, dtype=torch.float64), dim=-1) for n in (4, 4, 3))
    scale = 5.0
    logits = (scale * img @ torch.cat([txt, neg]).T).tolist()  # (4, 7): the 3 negatives match no image
    i2t = sum(-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(4)) / 4
    t2i = sum(-logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(4))) for j in range(4)) / 4
    got = cp.clip_contrastive_loss(img, txt, torch.tensor(scale, dtype=torch.float64), neg)
    assert got.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-10)
    assert got.item() > cp.clip_contrastive_loss(img, txt, torch.tensor(scale, dtype=torch.float64)).item()


@pytest.mark.parametrize("name", ["red stripes", "purple star", "yellow circle"])
def test_single_concept_images_show_the_concept(name):
    k = WORLD.concept_names.index(name)
    images = cp.single_concept_images(WORLD, k, 3, seed=0, size=64)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert not np.array_equal(images[0], images[1])
    if k >= WORLD.num_stuff:  # the thing covers the centre, in its colour up to jitter and noise
        rgb = np.array(WORLD.colours[(k - WORLD.num_stuff) // len(WORLD.shapes)].rgb, dtype=float)
        centre = images[:, 30:34, 30:34].reshape(-1, 3).mean(0)
        assert np.abs(centre - rgb).max() < 45
    else:  # red stripes: about half the pixels reddish
        red = (images[..., 0] > 150) & (images[..., 1] < 100)
        assert 0.2 < red.mean() < 0.8


def test_zero_shot_report_has_single_concept_top1():
    report = cp.evaluate_zero_shot(cp.create_mini_clip(), WORLD, num_scenes=4)
    assert set(report.per_concept_top1) == set(WORLD.concept_names)
    assert 0.0 <= report.top1_seen <= 1.0 and 0.0 <= report.top1_unseen <= 1.0
    assert all(v in {i / 8 for i in range(9)} for v in report.per_concept_top1.values())


def test_shipped_metadata_records_the_default_recipe():
    """`python -m patseg.mini.clip_pretrain --half --out-dir src/patseg/resources/mini_clip` regenerates it."""
    import json

    meta = json.loads((cp.SHIPPED_DIR / cp.META_FILE).read_text())
    recipe = cp.RECIPE
    assert (meta["steps"], meta["batch_size"], meta["lr"]) == (recipe.steps, recipe.batch_size, recipe.lr)
    assert (meta["hard_negatives"], meta["object_crops"]) == (recipe.hard_negatives, recipe.object_crops)
    zs = meta["zero_shot"]
    assert {"map_seen", "map_unseen", "top_n_accuracy", "top1_seen", "top1_unseen"} <= set(zs)
    assert set(zs["per_concept_top1"]) == set(WORLD.concept_names)
