"""What each of the demo page's events shows, as plain functions of the backend (testable without a server).

``patseg.demo.app`` lays these out with Gradio and wires them to the page's buttons.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass, field

from patseg.demo.backend import (
    BENCHMARK_VOCABULARIES,
    DemoBackend,
    HeatMap,
    ModelAnswer,
    Picture,
    benchmark_vocabulary,
    read_picture,
)
from patseg.errors import PatsegError

EXAMPLE_SCENES = 6


@dataclass
class PageView:
    """Everything the page shows after an event.

    status: Markdown for the message line (errors, notes, times); picture: what was segmented (None: nothing yet);
    answers: model name -> its answer; heat_class: the class whose score map is shown; heat: model -> heat map.
    """

    status: str
    picture: Picture | None = None
    answers: dict[str, ModelAnswer] = field(default_factory=dict)
    heat_class: str | None = None
    heat: dict[str, HeatMap] = field(default_factory=dict)


def legend_html(answer: ModelAnswer) -> str:
    """The classes present, largest first, each with its colour swatch and pixel share; unseen ones marked."""
    rows = []
    for entry in answer.legend:
        colour = "rgb({},{},{})".format(*entry.rgb)
        mark = '<span class="unseen">unseen</span>' if entry.unseen else ""
        rows.append(
            f'<li><span class="swatch" style="background:{colour}"></span>'
            f"{html.escape(entry.name)} ({entry.share:.1f}%){mark}</li>"
        )
    return f'<ul class="legend">{"".join(rows)}</ul>'


def segment_view(
    backend: DemoBackend, picture: Picture | None, vocabulary: str, notes: tuple[str, ...] = ()
) -> PageView:
    """Segment ``picture`` with every model; a mistake in the input becomes the status message."""
    if picture is None:
        return PageView("**Give an image first:** upload one" + (" or pick a scene." if backend.world else "."))
    try:
        answers = backend.segment(picture, vocabulary)
    except PatsegError as exc:
        return PageView(f"**Cannot segment:** {exc}", picture)
    first = next(iter(answers.values()))
    heat_class = first.legend[0].name if first.legend else first.segmenter.vocabulary[0]
    heat = {name: backend.heat_map(a, heat_class) for name, a in answers.items()}
    times = ", ".join(f"{name} {a.seconds:.2f} s" for name, a in answers.items())
    n = len(first.segmenter.vocabulary)
    lines = [
        f"Segmented {picture.source} with {n} class name{'s' if n != 1 else ''} ({times}).",
        *notes,
        *picture.notes,
    ]
    return PageView("  \n".join(lines), picture, answers, heat_class, heat)


def upload_view(backend: DemoBackend, path: str | None, vocabulary: str) -> PageView:
    """Read an uploaded file and segment it; an unreadable file becomes the status message."""
    if path is None:
        return PageView("**No file:** upload an image (JPEG, PNG, TIFF, BMP or WebP).")
    try:
        picture = read_picture(path, backend.max_long_side)
    except PatsegError as exc:
        return PageView(f"**Cannot read the upload:** {exc}")
    return segment_view(backend, picture, vocabulary)


def scene_view(backend: DemoBackend, index: int, vocabulary: str) -> PageView:
    """Generated scene ``index`` segmented (built-in models only)."""
    try:
        picture = backend.scene(index)
    except PatsegError as exc:
        return PageView(f"**{exc}**")
    return segment_view(backend, picture, vocabulary)


def heat_view(backend: DemoBackend, answers: dict[str, ModelAnswer], class_name: str | None) -> dict[str, HeatMap]:
    """Each model's heat map for ``class_name`` (empty when nothing was segmented or no class is picked)."""
    if not answers or not class_name:
        return {}
    try:
        return {name: backend.heat_map(a, class_name) for name, a in answers.items()}
    except PatsegError:
        return {}


def new_scene_index() -> int:
    return random.randrange(EXAMPLE_SCENES, 1_000_000)


def intro(backend: DemoBackend, title: str) -> str:
    """The Markdown under the page's title: which models, what they know."""
    text = f"# patseg demo\n{title}"
    if backend.world is not None:
        unseen = ", ".join(sorted(backend.unseen))
        text += (
            f"\n\nThe built-in models were trained on OVSS-mini's generated world *{backend.world.name}* without ever "
            f"seeing a label of these concepts, which they segment zero-shot: {unseen}. Type any names: the mini CLIP "
            "knows the world's colours, shapes and textures."
        )
    return text


def vocabulary_presets(backend: DemoBackend) -> dict[str, str]:
    """One-click vocabularies: the world's (all, unseen only) with the built-in models, else the benchmarks'."""
    if backend.world is not None:
        return {
            "World: all concepts": backend.default_vocabulary,
            "World: unseen only": ", ".join(backend.world.unseen_names),
        }
    return {label: benchmark_vocabulary(label) for label in BENCHMARK_VOCABULARIES}
