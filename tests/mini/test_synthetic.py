"""OVSS-mini world: vocabulary and split, determinism, exact labels, captions, restricted vocabularies."""

import dataclasses

import numpy as np
import open_clip
import pytest
import torch

from patseg.config import ConfigError
from patseg.mini import scenes as synthetic
from patseg.mini import world as synthetic_world
from patseg.mini.scenes import IGNORE_INDEX, SyntheticSegmentation, render_scene, scene_rng, shape_mask
from patseg.mini.world import WorldConfig, make_caption, world_hash

WORLD = WorldConfig()
# Without jitter and noise every pixel's colour is a pure function of the concept painted there.
CLEAN = dataclasses.replace(WORLD, brightness_jitter=0.0, noise_std=0.0)


def _parse_caption(caption: str, prefix: str = "a photo of") -> list[str]:
    assert caption.startswith(prefix + " ") and caption.endswith(".")
    body = caption[len(prefix) + 1 : -1]
    head, _, last = body.rpartition(" and ")
    return (head.split(", ") + [last]) if head else [body]


def test_vocabulary_and_split():
    names = WORLD.concept_names
    assert len(names) >= 32 and len(set(names)) == len(names)
    assert names[:3] == ("grass", "sky", "water") and names[WORLD.thing_index(1, 2)] == "green triangle"
    assert set(WORLD.seen_names) | set(WORLD.unseen_names) == set(names)
    assert not set(WORLD.seen_names) & set(WORLD.unseen_names)
    assert 0.15 <= len(WORLD.unseen_names) / len(names) <= 0.3
    seen_words = {w for n in WORLD.seen_names for w in n.split()}
    for name in WORLD.unseen_names:  # zero-shot transfer through text needs every word seen elsewhere
        assert set(name.split()) <= seen_words, name


def test_renderer_knows_every_configured_pattern_and_shape():
    assert set(synthetic.TEXTURES) == set(synthetic_world.PATTERNS)
    assert set(synthetic.SHAPES) == set(synthetic_world.SHAPES)


def test_concept_names_are_plain_bpe_words():
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    for name in WORLD.concept_names:
        ids = tokenizer.encoder  # every word of a name is one BPE token (with its end-of-word marker)
        assert all(word + "</w>" in ids for word in name.split()), name


def test_world_roundtrip_hash_and_validation():
    assert WorldConfig.from_dict(WORLD.to_dict()) == WORLD
    assert world_hash(WorldConfig.from_dict(WORLD.to_dict())) == world_hash(WORLD)
    assert world_hash(dataclasses.replace(WORLD, noise_std=4.0)) != world_hash(WORLD)
    with pytest.raises(ConfigError, match="orange circle"):
        dataclasses.replace(WORLD, unseen=("orange circle",))
    with pytest.raises(ConfigError, match="hexagon"):
        dataclasses.replace(WORLD, shapes=("circle", "hexagon"))


def test_make_caption():
    assert make_caption(["grass"]) == "a photo of grass."
    assert make_caption(["red circle", "grass"]) == "a photo of red circle and grass."
    assert make_caption(["red circle", "grass", "brick wall"]) == "a photo of red circle, grass and brick wall."


def test_render_is_deterministic_and_seed_dependent():
    a = render_scene(WORLD, scene_rng(3, "train", 5), 64)
    b = render_scene(WORLD, scene_rng(3, "train", 5), 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.caption == b.caption
    for other in (scene_rng(3, "train", 6), scene_rng(3, "val", 5), scene_rng(4, "train", 5)):
        assert not np.array_equal(render_scene(WORLD, other, 64).image, a.image)


def _point_in_polygon(py: float, px: float, vertices: list[tuple[float, float]]) -> bool:
    inside = False
    for (y1, x1), (y2, x2) in zip(vertices, vertices[1:] + vertices[:1]):
        if (y1 > py) != (y2 > py) and px < x1 + (py - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _reference_mask(shape: str, size: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Slow float64 rasteriser: polygons by ray casting on explicit vertices, loops over pixel centres."""

    def vertex(radius: float, theta: float) -> tuple[float, float]:
        # local (u, v) = (r cos theta, r sin theta) back to image (y, x); u = x sin + y cos, v = x cos - y sin
        u, v = radius * np.cos(theta), radius * np.sin(theta)
        return cy + u * np.cos(angle) - v * np.sin(angle), cx + u * np.sin(angle) + v * np.cos(angle)

    if shape == "square":
        poly = [vertex(r, np.pi / 4 + k * np.pi / 2) for k in range(4)]
    elif shape == "triangle":  # edge normals at 90, 210, 330 deg -> vertices at 30, 150, 270 deg
        poly = [vertex(r, np.pi / 6 + k * 2 * np.pi / 3) for k in range(3)]
    elif shape == "star":
        poly = [vertex(r if k % 2 == 0 else 0.45 * r, k * np.pi / 5) for k in range(10)]
    out = np.zeros((size, size), dtype=bool)
    for i in range(size):
        for j in range(size):
            y, x = i + 0.5, j + 0.5
            if shape == "circle":
                out[i, j] = (y - cy) ** 2 + (x - cx) ** 2 <= r**2
            else:
                out[i, j] = _point_in_polygon(y, x, poly)
    return out


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star"])
def test_shape_masks_match_polygon_reference(shape):
    rng = np.random.default_rng(1)
    for _ in range(3):
        cy, cx, r, angle = *rng.uniform(10, 22, size=2), rng.uniform(5, 11), rng.uniform(0, 2 * np.pi)
        mask = shape_mask(shape, 32, cy, cx, r, angle)
        assert mask.sum() > 10
        assert np.array_equal(mask, _reference_mask(shape, 32, cy, cx, r, angle))


def test_every_pixel_shows_its_label():
    for index in range(12):
        scene = render_scene(CLEAN, scene_rng(0, "check", index), 96)
        image = scene.image.astype(np.float64)
        for concept in scene.present:
            pixels = image[scene.label == concept]
            if concept >= CLEAN.num_stuff:  # things are solid: exactly their colour
                colour, _ = divmod(concept - CLEAN.num_stuff, len(CLEAN.shapes))
                assert np.abs(pixels - CLEAN.colours[colour].rgb).max() <= 0.5
            else:  # stuff pixels lie on the segment primary -> secondary of the texture
                spec = CLEAN.stuff[concept]
                a, b = np.asarray(spec.primary, float), np.asarray(spec.secondary, float)
                t = np.clip((pixels - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
                assert np.abs(pixels - (a + t[:, None] * (b - a))).max() <= 1.0, spec.name


def test_caption_names_exactly_the_concepts_present():
    seen_things = 0
    for index in range(20):
        scene = render_scene(WORLD, scene_rng(1, "train", index), 96)
        listed = _parse_caption(scene.caption)
        assert sorted(listed) == sorted(WORLD.concept_names[i] for i in np.unique(scene.label))
        assert len(set(listed)) == len(listed) and scene.present == tuple(np.unique(scene.label))
        seen_things += sum(i >= WORLD.num_stuff for i in scene.present)
    assert seen_things >= 20  # scenes do contain things, not only stuff


def test_dataset_items_and_restricted_vocabulary():
    full = SyntheticSegmentation(WORLD, "train", 6, 64, seed=2)
    seen = SyntheticSegmentation(WORLD, "train", 6, 64, seed=2, concepts=WORLD.seen_names)
    assert len(full) == 6 and seen.class_names == WORLD.seen_names
    hit_unseen = False
    for i in range(6):
        a, b = full[i], seen[i]
        assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, 64, 64)
        assert a["label"].dtype == torch.int64 and a["label"].shape == (64, 64)
        assert a["name"] == f"train_{i:06d}" and a["caption"] == b["caption"]
        assert torch.equal(a["image"], b["image"])
        names = [WORLD.concept_names[k] for k in a["label"].flatten().tolist()]
        expected = [WORLD.seen_names.index(n) if n in WORLD.seen_names else IGNORE_INDEX for n in names]
        assert b["label"].flatten().tolist() == expected
        hit_unseen |= IGNORE_INDEX in expected
    assert hit_unseen
    with pytest.raises(IndexError):
        full[6]
    with pytest.raises(ValueError, match="orange"):
        SyntheticSegmentation(WORLD, "train", 1, 64, seed=0, concepts=["orange circle"])
