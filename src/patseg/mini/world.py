"""The OVSS-mini world: a fixed vocabulary of named concepts, its seen/unseen split, and its rendering rules.

OVSS-mini reproduces the *protocol* of open-vocabulary segmentation at toy scale. Its world has two kinds of
concept, named the way a text prompt would name them so that CLIP's BPE tokenizer sees ordinary English words:

- *stuff*: textures that fill regions ("grass", "brick wall", "red stripes");
- *things*: solid shapes named colour + shape ("green triangle"), placed with random size, position and rotation.

Concept index = position in :attr:`WorldConfig.concept_names`: the stuff in config order, then every colour x shape
pair (colour-major). The *unseen* concepts are held out of segmentation training; each of them shares its words
with seen concepts ("green triangle" is unseen while "green square" and "red triangle" are seen), so zero-shot
transfer through the text encoder is possible at all. Rendering lives in :mod:`patseg.mini.scenes`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from patseg.config import ConfigError, from_dict, to_dict

RGB = tuple[int, int, int]

# Texture generators known to the renderer (patseg.mini.scenes.TEXTURES) and shape rasterisers
# (patseg.mini.scenes.SHAPES); kept here so a config can be validated without rendering anything.
PATTERNS = ("grass", "clouds", "waves", "grain", "bricks", "wood", "stripes", "dots")
SHAPES = ("circle", "square", "triangle", "star")


@dataclass(frozen=True)
class Colour:
    """A named colour shared by things and coloured stuff, so that "red" means one hue everywhere."""

    name: str
    rgb: RGB


@dataclass(frozen=True)
class StuffSpec:
    """A texture concept: ``pattern`` mixes ``primary`` and ``secondary`` with features ``period`` x side apart."""

    name: str
    pattern: str  # one of PATTERNS
    primary: RGB
    secondary: RGB
    period: float  # feature spacing as a fraction of the image side (stripe period, brick height, ...)


_RED, _GREEN, _BLUE = (215, 35, 35), (35, 165, 55), (40, 75, 215)
_WHITE = (235, 235, 230)

DEFAULT_COLOURS: tuple[Colour, ...] = (
    Colour("red", _RED),
    Colour("green", _GREEN),
    Colour("blue", _BLUE),
    Colour("yellow", (240, 205, 30)),
    Colour("purple", (140, 50, 180)),
)

DEFAULT_STUFF: tuple[StuffSpec, ...] = (
    StuffSpec("grass", "grass", (70, 135, 45), (25, 80, 25), 0.02),
    StuffSpec("sky", "clouds", (110, 170, 235), (245, 245, 250), 0.25),
    StuffSpec("water", "waves", (25, 70, 150), (80, 140, 205), 0.08),
    StuffSpec("sand", "grain", (220, 195, 140), (180, 150, 95), 0.02),
    StuffSpec("brick wall", "bricks", (150, 55, 35), (205, 200, 185), 0.08),
    StuffSpec("wood", "wood", (160, 105, 55), (100, 60, 30), 0.07),
    StuffSpec("red stripes", "stripes", _RED, _WHITE, 0.09),
    StuffSpec("green stripes", "stripes", _GREEN, _WHITE, 0.09),
    StuffSpec("blue stripes", "stripes", _BLUE, _WHITE, 0.09),
    StuffSpec("red dots", "dots", _RED, _WHITE, 0.1),
    StuffSpec("green dots", "dots", _GREEN, _WHITE, 0.1),
    StuffSpec("blue dots", "dots", _BLUE, _WHITE, 0.1),
)

# One unseen shape per colour, cycling through the shapes, plus two coloured patterns: 7 of 32 concepts (22%).
DEFAULT_UNSEEN: tuple[str, ...] = (
    "blue stripes",
    "green dots",
    "red square",
    "green triangle",
    "blue star",
    "yellow circle",
    "purple square",
)


@dataclass(frozen=True)
class WorldConfig:
    """Vocabulary, seen/unseen split and rendering rules of a procedural world (JSON-serialisable)."""

    name: str = "ovss-mini-v1"
    colours: tuple[Colour, ...] = DEFAULT_COLOURS
    shapes: tuple[str, ...] = SHAPES
    stuff: tuple[StuffSpec, ...] = DEFAULT_STUFF
    unseen: tuple[str, ...] = DEFAULT_UNSEEN
    stuff_per_scene: tuple[int, int] = (1, 3)  # inclusive range of stuff regions (Voronoi cells) per scene
    things_per_scene: tuple[int, int] = (1, 3)  # inclusive range of things painted over the stuff
    thing_scale: tuple[float, float] = (0.12, 0.25)  # thing circumradius as a fraction of the image side
    min_visible: float = 0.5  # a thing is re-placed if it would leave an earlier one less than this visible
    placement_tries: int = 8  # re-placements before a thing is dropped from the scene
    brightness_jitter: float = 0.12  # per-instance multiplicative colour jitter, uniform in [1-j, 1+j]
    noise_std: float = 5.0  # per-pixel Gaussian noise in uint8 levels
    caption_prefix: str = "a photo of"
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(s.name for s in self.stuff) + tuple(f"{c.name} {s}" for c in self.colours for s in self.shapes)
        object.__setattr__(self, "_names", names)
        validate_world(self)

    @property
    def concept_names(self) -> tuple[str, ...]:
        """All concept names in index order (stuff first, then things colour-major)."""
        return self._names

    @property
    def num_stuff(self) -> int:
        return len(self.stuff)

    @property
    def seen_names(self) -> tuple[str, ...]:
        """Concepts used for segmentation training, in index order."""
        return tuple(n for n in self._names if n not in self.unseen)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        """Held-out concepts, in index order."""
        return tuple(n for n in self._names if n in self.unseen)

    def thing_index(self, colour: int, shape: int) -> int:
        """Concept index of thing (colour ``colour``, shape ``shape``), both indices into the config tuples."""
        return self.num_stuff + colour * len(self.shapes) + shape

    def to_dict(self) -> dict:
        return {k: v for k, v in to_dict(self).items() if not k.startswith("_")}

    @classmethod
    def from_dict(cls, data: dict) -> "WorldConfig":
        return from_dict(cls, data)


def validate_world(world: WorldConfig) -> None:
    """Raise ConfigError when names clash, a pattern/shape is unknown, or an unseen name is not a concept."""
    names = world.concept_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"world '{world.name}': duplicate concept names {dupes}")
    for spec in world.stuff:
        if spec.pattern not in PATTERNS:
            raise ConfigError(f"stuff '{spec.name}': unknown pattern '{spec.pattern}' (known: {', '.join(PATTERNS)})")
    unknown = [s for s in world.shapes if s not in SHAPES]
    if unknown:
        raise ConfigError(f"unknown shape '{unknown[0]}' (known: {', '.join(SHAPES)})")
    missing = [n for n in world.unseen if n not in names]
    if missing:
        raise ConfigError(f"unseen concept '{missing[0]}' is not in the world's vocabulary")
    # Zero-shot transfer goes through the text encoder, so every word of an unseen name must be trained on.
    seen_words = {w for n in names if n not in world.unseen for w in n.split()}
    for name in world.unseen:
        orphans = [w for w in name.split() if w not in seen_words]
        if orphans:
            raise ConfigError(f"unseen concept '{name}': word '{orphans[0]}' appears in no seen concept")
    lo, hi = world.stuff_per_scene
    if not 1 <= lo <= hi <= len(world.stuff):
        raise ConfigError(f"stuff_per_scene {world.stuff_per_scene} must satisfy 1 <= lo <= hi <= {len(world.stuff)}")
    lo, hi = world.things_per_scene
    if not 0 <= lo <= hi <= len(world.colours) * len(world.shapes):
        raise ConfigError(f"things_per_scene {world.things_per_scene} out of range")


def world_hash(world: WorldConfig) -> str:
    """Stable 16-hex-digit digest of the world's canonical JSON; names cached artifacts trained on this world."""
    blob = json.dumps(world.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def make_caption(names: list[str] | tuple[str, ...], prefix: str = "a photo of") -> str:
    """English list caption: ``"a photo of red circle, grass and brick wall."``."""
    if not names:
        raise ValueError("a caption needs at least one concept")
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{prefix} {listed}."


def caption_order(world: WorldConfig, present: list[int] | tuple[int, ...]) -> list[str]:
    """Names of the concept indices ``present``: things first, then stuff, each in index order."""
    things = sorted(i for i in present if i >= world.num_stuff)
    stuff = sorted(i for i in present if i < world.num_stuff)
    return [world.concept_names[i] for i in things + stuff]


# ---------------------------------------------------------------------------------------------------------------
# Seeded worlds: seed 0 is the default world above; any other seed draws a different vocabulary and split.

# Named colours with clearly distinct RGBs; the first five are the default world's.
COLOUR_TABLE: tuple[Colour, ...] = DEFAULT_COLOURS + (
    Colour("orange", (245, 130, 20)),
    Colour("pink", (245, 140, 190)),
    Colour("brown", (120, 70, 30)),
    Colour("black", (25, 25, 25)),
    Colour("white", (240, 240, 240)),
    Colour("grey", (128, 128, 128)),
    Colour("cyan", (40, 210, 220)),
)

# Natural stuff: (name, pattern, primary, secondary, period); colours are jittered per world.
NATURAL_STUFF: tuple[StuffSpec, ...] = DEFAULT_STUFF[:6] + (
    StuffSpec("snow", "grain", (240, 242, 248), (200, 210, 225), 0.02),
    StuffSpec("dirt", "grain", (115, 80, 50), (80, 55, 35), 0.03),
    StuffSpec("ocean", "waves", (20, 100, 130), (60, 160, 170), 0.1),
    StuffSpec("fog", "clouds", (170, 175, 180), (220, 222, 225), 0.3),
)

COLOURED_PATTERNS = ("stripes", "dots")  # patterns named "<colour> <pattern>"
UNSEEN_FRACTION = 0.2
_SEED_SALT = 0x5EED_0F_3011D  # keeps make_world's stream apart from other users of small integer seeds


def _jitter_rgb(rgb: RGB, rng: np.random.Generator, amount: float = 0.12) -> RGB:
    values = np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * rng.uniform(1 - amount, 1 + amount, 3)), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _pick(rng: np.random.Generator, items: tuple, lo: int, hi: int) -> list:
    """``lo``..``hi`` distinct items in table order (table order keeps concept indices readable)."""
    count = int(rng.integers(lo, hi + 1))
    return [items[i] for i in sorted(rng.choice(len(items), size=count, replace=False))]


def _draw_unseen(names: list[str], target: int, rng: np.random.Generator) -> tuple[str, ...]:
    """Up to ``target`` multi-word names held out, greedily, so that each word stays in some seen name."""
    candidates = [n for n in names if len(n.split()) > 1]
    unseen: list[str] = []
    for k in rng.permutation(len(candidates)):
        if len(unseen) == target:
            break
        trial = unseen + [candidates[k]]
        seen_words = {w for n in names if n not in trial for w in n.split()}
        if all(w in seen_words for n in trial for w in n.split()):
            unseen = trial
    return tuple(n for n in names if n in unseen)  # index order, like DEFAULT_UNSEEN's listing


def make_world(seed: int) -> WorldConfig:
    """The world of ``seed``: 0 is the default :class:`WorldConfig` (the README's); others are drawn from it.

    A drawn world has 4-6 colours from :data:`COLOUR_TABLE`, 3-4 shapes, 4-6 natural stuff concepts with
    jittered colours, 2-5 "<colour> stripes/dots" concepts in the world's own colours, and about 20% of all
    concepts held out as unseen, each sharing its words with seen ones. Deterministic across machines: numpy's
    PCG64 stream from ``[seed, salt]`` and integer/rounded values only.
    """
    if seed < 0:
        raise ValueError(f"world seed must be >= 0, got {seed}")
    if seed == 0:
        return WorldConfig()
    rng = np.random.default_rng([seed, _SEED_SALT])
    colours = _pick(rng, COLOUR_TABLE, 4, 6)
    shapes = _pick(rng, SHAPES, 3, 4)
    natural = [
        StuffSpec(s.name, s.pattern, _jitter_rgb(s.primary, rng), _jitter_rgb(s.secondary, rng), s.period)
        for s in _pick(rng, NATURAL_STUFF, 4, 6)
    ]
    # Coloured patterns use the world's colours so a colour word means one hue everywhere; white/pale ones get a
    # dark ground so the pattern stays visible.
    pairs = [(c, p) for p in COLOURED_PATTERNS for c in colours]
    coloured = []
    for colour, pattern in _pick(rng, tuple(pairs), 2, 5):
        ground = (40, 40, 45) if sum(colour.rgb) > 600 else _WHITE
        period = round(float(rng.uniform(0.07, 0.12) if pattern == "stripes" else rng.uniform(0.08, 0.13)), 3)
        coloured.append(StuffSpec(f"{colour.name} {pattern}", pattern, colour.rgb, ground, period))
    draft = WorldConfig(
        name=f"ovss-mini-v1-seed{seed}",
        colours=tuple(colours),
        shapes=tuple(shapes),
        stuff=tuple(natural + coloured),
        unseen=(),
    )
    names = list(draft.concept_names)
    unseen = _draw_unseen(names, max(1, round(UNSEEN_FRACTION * len(names))), rng)
    return WorldConfig(name=draft.name, colours=draft.colours, shapes=draft.shapes, stuff=draft.stuff, unseen=unseen)
