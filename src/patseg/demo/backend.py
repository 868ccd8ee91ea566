"""What the demo page computes, without the page: reading and checking the user's input, segmenting it with every
loaded model, and turning the answers into pictures (overlay, label map, score heat map, PAT's token maps and
reconstruction).

Everything the user can get wrong raises :class:`patseg.errors.UsageError` (or ImageReadError) with a message meant
for the page; the page shows it and carries on.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from patseg.errors import ImageReadError, UsageError
from patseg.images import palette, read_rgb, tint
from patseg.mini.scenes import render_scene, scene_rng
from patseg.mini.world import WorldConfig
from patseg.models.pat.geometry import STAGES
from patseg.models.pat.model import PAT, PatOutput
from patseg.models.san.model import SAN
from patseg.precision import check_precision
from patseg.predictor import Inference, Segmenter, check_vocabulary
from patseg.resources import load_class_names

# One-click vocabularies: label -> class-name list in patseg/resources/classnames.
BENCHMARK_VOCABULARIES = {
    "COCO-Stuff-171": "coco_stuff_171",
    "ADE20K-150": "ade20k_150",
    "ADE20K-847": "ade20k_847",
    "Pascal Context-59": "pcontext_59",
    "Pascal Context-459": "pcontext_459",
    "Pascal VOC-20": "voc_20",
}
DISPLAY_SIDE = 384  # small pictures (the built-in models work at 128 px) are enlarged to about this for the page
MAX_CLASSES = 1000  # ADE20K-847 fits; text encoding thousands of names would hold the queue for minutes
BUILTIN_TITLE = "Built-in models: SAN-tiny and PAT-tiny (OVSS-mini), side by side."
SCENE_SPLIT = "demo"  # the page's scenes are their own stream, apart from OVSS-mini's train and val scenes


@dataclass(frozen=True)
class Picture:
    """An image the page segments: (H, W, 3) uint8 RGB, where it came from, and what was done to it on the way."""

    image: np.ndarray
    source: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LegendEntry:
    name: str
    rgb: tuple[int, int, int]
    share: float  # percent of the image's pixels
    unseen: bool = False  # a concept the model never saw a label of (the built-in models' held-out ones)


@dataclass
class ModelAnswer:
    """One model's segmentation of one picture.

    labels: (H, W) int64 vocabulary indices; overlay: the image tinted by class (the page lists the legend beside it);
    label_map: (H, W, 3) class colours; legend: the classes present, largest first; seconds: wall time of the
    forward pass and the label map; segmenter and inference: what a heat map is computed from; token_maps: PAT's
    code indices per stage as colours (h_s, w_s, 3); reconstruction: PAT's decoded image (H', W', 3), or None.
    """

    name: str
    labels: np.ndarray
    overlay: np.ndarray
    label_map: np.ndarray
    legend: list[LegendEntry]
    seconds: float
    segmenter: Segmenter
    inference: Inference
    token_maps: dict[str, np.ndarray] = field(default_factory=dict)
    reconstruction: np.ndarray | None = None


@dataclass(frozen=True)
class HeatMap:
    """A class's score map as colours (H, W, 3); ``top`` is the score drawn in the brightest colour."""

    class_name: str
    image: np.ndarray
    top: float


def parse_vocabulary(text: str, max_classes: int = MAX_CLASSES) -> list[str]:
    """Class names from the page's text box: one per line, or separated by commas when all are on one line (so a
    benchmark name that holds commas, ADE's "wall, walls" say, stays one class on its own line).

    Blank lines and blank items are skipped. Raises UsageError for an empty list, a repeated name (naming it) or
    more than ``max_classes`` names."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    items = lines if len(lines) > 1 else (lines[0].split(",") if lines else [])
    names = [n.strip() for n in items if n.strip()]
    if not names:
        raise UsageError("the vocabulary is empty: type class names, e.g. 'sky, tree, road' or one per line")
    if len(names) > max_classes:
        raise UsageError(
            f"the vocabulary has {len(names):,} names; this page takes at most {max_classes:,} "
            "(start it with a larger --max-classes, or use `patseg segment` for huge vocabularies)"
        )
    return check_vocabulary(names, "the vocabulary")


def benchmark_vocabulary(label: str) -> str:
    """The class names of a one-click vocabulary, one per line, verbatim."""
    return "\n".join(load_class_names(BENCHMARK_VOCABULARIES[label]))


def fit_picture(image: np.ndarray, source: str, max_side: int) -> Picture:
    """``image`` with its long side brought down to ``max_side`` when larger (the page says so in ``notes``)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return Picture(image, source)
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.array(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    note = f"the image ({w} x {h}) is larger than this model works at; it was resized to {size[0]} x {size[1]}"
    return Picture(small, source, (note,))


def read_picture(path: str | Path, max_side: int) -> Picture:
    """An uploaded file as a Picture; ImageReadError names the file when it is not a readable image."""
    path = Path(path)
    try:
        image = read_rgb(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path.name}: refused, too many pixels ({exc})") from None
    except ImageReadError as exc:
        raise ImageReadError(str(exc).replace(str(path), path.name)) from None
    return fit_picture(image, path.name, max_side)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


def enlarge(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """Repeat pixels by the largest integer factor that keeps the long side at most ``side`` (at least 1)."""
    k = max(1, side // max(image.shape[:2]))
    return image if k == 1 else np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def heat_colours(score: np.ndarray, top: float = 1.0) -> np.ndarray:
    """(H, W) scores in [0, top] -> (H, W, 3) uint8, dark blue (0) through red to yellow (``top``)."""
    stops = np.array([[20, 20, 80], [60, 60, 200], [220, 40, 40], [255, 220, 40]], dtype=np.float32)
    x = np.clip(score / top, 0.0, 1.0) * (len(stops) - 1)
    i = np.minimum(x.astype(np.int64), len(stops) - 2)
    t = (x - i)[..., None]
    return ((1 - t) * stops[i] + t * stops[i + 1]).astype(np.uint8)


def code_colours(codes: np.ndarray) -> np.ndarray:
    """(h, w) code indices -> (h, w, 3) colours, one per code in use (ranked, as in the paper's token maps)."""
    used, ranked = np.unique(codes, return_inverse=True)
    return palette(len(used))[ranked.reshape(codes.shape)]


class DemoBackend:
    """The loaded models, a cache of their text embeddings per vocabulary, and the page's computations.

    Arguments:
        models: display name -> SAN or PAT model (eval mode; loaded once, shared by every request).
        short_side, max_long_side: the test resize; pictures larger than ``max_long_side`` are shrunk on arrival.
        world: the OVSS-mini world of the built-in models (scenes, default vocabulary, unseen marks), or None.
        cache_size: vocabularies whose text embeddings are kept.
        precision: the Segmenters' precision (:mod:`patseg.precision`); refused here when the models' device cannot
            run it.
    """

    def __init__(
        self,
        models: dict[str, SAN],
        *,
        short_side: int,
        max_long_side: int,
        world: WorldConfig | None = None,
        max_classes: int = MAX_CLASSES,
        cache_size: int = 8,
        precision: str = "fp32",
    ) -> None:
        if not models:
            raise ValueError("the demo needs at least one model")
        for model in models.values():  # refused at start-up, not on the first request
            check_precision(precision, next(model.parameters()).device)
        self.precision = precision
        self.models, self.world = models, world
        self.short_side, self.max_long_side, self.max_classes = short_side, max_long_side, max_classes
        self._segmenters: OrderedDict[tuple[str, tuple[str, ...]], Segmenter] = OrderedDict()
        self._cache_size = cache_size

    @property
    def default_vocabulary(self) -> str:
        return ", ".join(self.world.concept_names) if self.world is not None else "sky, tree, building, road, person"

    @property
    def unseen(self) -> frozenset[str]:
        return frozenset(self.world.unseen_names) if self.world is not None else frozenset()

    def scene(self, index: int, size: int | None = None) -> Picture:
        """Generated scene ``index`` of the built-in models' world."""
        if self.world is None:
            raise UsageError("generated scenes come with the built-in models (start `patseg demo` without --weights)")
        scene = render_scene(self.world, scene_rng(0, SCENE_SPLIT, index), size or self.short_side)
        return Picture(scene.image, f"generated scene #{index}")

    def segmenter(self, name: str, vocabulary: tuple[str, ...]) -> Segmenter:
        """The model's Segmenter for ``vocabulary``; its text embeddings are computed once and kept (LRU)."""
        key = (name, vocabulary)
        if key in self._segmenters:
            self._segmenters.move_to_end(key)
            return self._segmenters[key]
        segmenter = Segmenter(
            self.models[name],
            vocabulary,
            short_side=self.short_side,
            max_long_side=self.max_long_side,
            precision=self.precision,
        )
        self._segmenters[key] = segmenter
        while len(self._segmenters) > self._cache_size * len(self.models):
            self._segmenters.popitem(last=False)
        return segmenter

    def segment(self, picture: Picture, vocabulary_text: str) -> dict[str, ModelAnswer]:
        """Every model's answer for ``picture`` under the vocabulary typed in the page."""
        names = tuple(parse_vocabulary(vocabulary_text, self.max_classes))
        return {name: self._answer(name, picture.image, names) for name in self.models}

    def _answer(self, name: str, image: np.ndarray, names: tuple[str, ...]) -> ModelAnswer:
        segmenter = self.segmenter(name, names)
        is_pat = isinstance(self.models[name], PAT)
        start = time.perf_counter()
        inference = segmenter.infer(image, reconstruct=is_pat)
        labels = segmenter.labels(inference)
        seconds = time.perf_counter() - start
        colours = palette(len(names))
        counts = np.bincount(labels.ravel(), minlength=len(names))
        present = sorted(np.flatnonzero(counts), key=lambda c: -counts[c])
        legend = [
            LegendEntry(names[c], _rgb(colours[c]), 100.0 * counts[c] / labels.size, names[c] in self.unseen)
            for c in present
        ]
        answer = ModelAnswer(
            name=name,
            labels=labels,
            overlay=tint(image, colours[labels]),
            label_map=colours[labels],
            legend=legend,
            seconds=seconds,
            segmenter=segmenter,
            inference=inference,
        )
        if is_pat:
            self._add_tokens(answer, inference)
        return answer

    @staticmethod
    def _add_tokens(answer: ModelAnswer, inference: Inference) -> None:
        out = inference.output
        assert isinstance(out, PatOutput)
        h, w = inference.valid
        ph, pw = inference.padded
        for stage in STAGES:
            codes = out.quant[stage].indices[0].cpu().numpy()
            # Crop the padding: the code grid covers the padded input.
            ch, cw = round(codes.shape[0] * h / ph), round(codes.shape[1] * w / pw)
            answer.token_maps[stage] = code_colours(codes[: max(ch, 1), : max(cw, 1)])
        if out.reconstruction is not None:
            recon = out.reconstruction[0, :, :h, :w].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            answer.reconstruction = (recon * 255 + 0.5).astype(np.uint8)

    @staticmethod
    def heat_map(answer: ModelAnswer, class_name: str) -> HeatMap:
        """The score map of ``class_name`` in one answer (the class must be in its vocabulary).

        SAN's semantic score sums the class probability over every query's mask, so it can pass 1; the colours
        run from 0 to 1, or to the map's maximum when that is larger (``top`` says which)."""
        vocabulary = answer.segmenter.vocabulary
        if class_name not in vocabulary:
            raise UsageError(f"'{class_name}' is not in the vocabulary of the last run")
        score = answer.segmenter.class_score(answer.inference, vocabulary.index(class_name))
        top = max(1.0, float(score.max()))
        return HeatMap(class_name, heat_colours(score, top), top)


def builtin_backend(device: str = "cpu", max_classes: int = MAX_CLASSES, precision: str = "fp32") -> DemoBackend:
    """The shipped SAN-tiny and PAT-tiny on their world, at the resolution they were trained at, in ``precision``."""
    from patseg.demo.shipped import load_shipped
    from patseg.mini.benchmark import FULL

    side = FULL.image_size
    return DemoBackend(
        load_shipped(device),
        short_side=side,
        max_long_side=4 * side,
        world=WorldConfig(),
        max_classes=max_classes,
        precision=precision,
    )
