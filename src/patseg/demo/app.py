"""The demo page's Gradio layout and wiring; what each event computes is in ``patseg.demo.page``.

This module imports Gradio (the ``patseg[demo]`` extra) and is imported only when the page is built.
"""

import gradio as gr
import numpy as np

from patseg.demo.backend import DemoBackend, HeatMap, enlarge
from patseg.demo.page import (
    EXAMPLE_SCENES,
    PageView,
    heat_view,
    intro,
    legend_html,
    new_scene_index,
    scene_view,
    segment_view,
    upload_view,
    vocabulary_presets,
)
from patseg.models.pat.geometry import STAGES
from patseg.models.pat.model import PAT

CSS = """
.legend {list-style: none; padding: 0; margin: 0; columns: 2;}
.legend li {margin: 2px 0;}
.legend .swatch {display: inline-block; width: 14px; height: 14px; border: 1px solid #000; margin-right: 6px;
                 vertical-align: middle;}
.legend .unseen {font-size: 0.8em; color: #a33; margin-left: 4px;}
"""


def heat_update(heat: HeatMap) -> dict:
    """The heat-map image with a label that names the class and the colour scale."""
    return gr.update(value=enlarge(heat.image), label=f"score of '{heat.class_name}' (0 to {heat.top:.2f})")


class ModelPanel:
    """One model's column: header (name, time), overlay, legend, label map, heat map; PAT's tokens below."""

    def __init__(self, index: int, name: str) -> None:
        self.name = name
        self.header = gr.Markdown(f"### {name}", elem_id=f"header-{index}")
        self.overlay = gr.Image(label=f"{name}: overlay", interactive=False, elem_id=f"overlay-{index}")
        self.legend = gr.HTML(elem_id=f"legend-{index}")
        with gr.Row():
            self.labels = gr.Image(label="label map", interactive=False)
            self.heat = gr.Image(label="score heat map", interactive=False, elem_id=f"heat-{index}")

    def components(self) -> list:
        return [self.header, self.overlay, self.legend, self.labels, self.heat]

    def values(self, view: PageView) -> list:
        answer = view.answers[self.name]
        return [
            f"### {self.name}  \n{answer.seconds:.2f} s",
            enlarge(answer.overlay),
            legend_html(answer),
            enlarge(answer.label_map),
            heat_update(view.heat[self.name]),
        ]


class TokenPanel:
    """PAT's code-index map per pyramid stage (the paper's Fig. 1) and its reconstruction of the image."""

    def __init__(self, name: str) -> None:
        self.name = name
        gr.Markdown(f"### {name}: tokens per pyramid stage (one colour per code) and the reconstruction")
        with gr.Row():
            self.images = [gr.Image(label=f"{stage} tokens", interactive=False) for stage in STAGES]
            self.images.append(gr.Image(label="reconstruction", interactive=False, elem_id="reconstruction"))

    def values(self, view: PageView) -> list:
        answer = view.answers[self.name]
        maps: list[np.ndarray | None] = [enlarge(answer.token_maps[s], 192) for s in STAGES]
        maps.append(None if answer.reconstruction is None else enlarge(answer.reconstruction, 192))
        return maps


class DemoApp:
    """The page's components; :meth:`show` turns a PageView into the values of :attr:`outputs`."""

    def __init__(self, backend: DemoBackend, title: str) -> None:
        self.backend = backend
        gr.Markdown(intro(backend, title))
        self.picture, self.answers = gr.State(None), gr.State({})
        with gr.Row():
            with gr.Column(scale=1):
                self.preview = gr.Image(label="Image", type="numpy", interactive=False, height=320)
                self.upload = gr.File(label="Upload an image", type="filepath", elem_id="upload")
                if backend.world is not None:
                    scenes = [enlarge(backend.scene(i).image, 160) for i in range(EXAMPLE_SCENES)]
                    self.gallery = gr.Gallery(
                        scenes,
                        label="Example scenes (click one)",
                        columns=3,
                        height="auto",
                        allow_preview=False,
                        elem_id="scenes",
                    )
                    self.new_scene = gr.Button("New scene", elem_id="new-scene")
            with gr.Column(scale=1):
                self.vocabulary = gr.Textbox(
                    backend.default_vocabulary,
                    label="Class names (one per line, or comma-separated on one line)",
                    lines=5,
                    max_lines=12,
                    elem_id="vocabulary",
                )
                self.presets = vocabulary_presets(backend)
                with gr.Row():
                    self.preset_buttons = {label: gr.Button(label, size="sm") for label in self.presets}
                self.run = gr.Button("Segment", variant="primary", elem_id="segment")
                hint = "Upload an image" + (" or pick a scene" if backend.world is not None else "") + "."
                self.status = gr.Markdown(hint, elem_id="status")
                self.heat_class = gr.Dropdown([], label="Score heat map of", interactive=True, elem_id="heat-class")
        with gr.Row():
            self.panels = []
            for i, name in enumerate(backend.models):
                with gr.Column():
                    self.panels.append(ModelPanel(i, name))
        pats = [name for name, model in backend.models.items() if isinstance(model, PAT)]
        self.tokens = [TokenPanel(name) for name in pats]
        self.outputs = [self.status, self.preview, self.picture, self.answers, self.heat_class]
        self.outputs += [c for panel in self.panels for c in panel.components()]
        self.outputs += [image for panel in self.tokens for image in panel.images]

    def show(self, view: PageView) -> list:
        """Values for :attr:`outputs`; parts the view does not have keep what the page shows."""
        values: list = [view.status]
        if view.picture is not None:
            values += [enlarge(view.picture.image, 320), view.picture]
            if view.answers:
                vocabulary = list(next(iter(view.answers.values())).segmenter.vocabulary)
                values += [view.answers, gr.update(choices=vocabulary, value=view.heat_class)]
                values += [v for panel in self.panels for v in panel.values(view)]
                values += [v for panel in self.tokens for v in panel.values(view)]
        return values + [gr.update()] * (len(self.outputs) - len(values))

    def wire(self) -> None:
        backend = self.backend
        self.run.click(
            lambda p, v: self.show(segment_view(backend, p, v)), [self.picture, self.vocabulary], self.outputs
        )
        self.upload.upload(
            lambda f, v: self.show(upload_view(backend, f, v)), [self.upload, self.vocabulary], self.outputs
        )
        if backend.world is not None:

            def pick_scene(vocabulary: str, evt: gr.SelectData) -> list:
                return self.show(scene_view(backend, evt.index, vocabulary))

            self.gallery.select(pick_scene, [self.vocabulary], self.outputs)
            self.new_scene.click(
                lambda v: self.show(scene_view(backend, new_scene_index(), v)), [self.vocabulary], self.outputs
            )
        for label, button in self.preset_buttons.items():
            button.click(lambda text=self.presets[label]: text, [], self.vocabulary)
        self.heat_class.input(self.update_heat, [self.answers, self.heat_class], [p.heat for p in self.panels])

    def update_heat(self, answers: dict, class_name: str | None) -> list:
        maps = heat_view(self.backend, answers, class_name)
        return [heat_update(maps[p.name]) if p.name in maps else gr.update() for p in self.panels]


def build_blocks(backend: DemoBackend, title: str) -> gr.Blocks:
    """The Gradio page for ``backend``."""
    with gr.Blocks(title="patseg demo", analytics_enabled=False) as blocks:
        DemoApp(backend, title).wire()
    return blocks


def serve(backend: DemoBackend, title: str, host: str, port: int) -> gr.Blocks:
    """Build the page and start serving it on ``host:port`` in a background thread; returns the Blocks (their
    ``block_thread()`` waits for Ctrl-C, ``close()`` stops the server). Requests queue and run one at a time, as
    the models are shared.

    Raises:
        OSError: the port is taken or cannot be bound.
    """
    blocks = build_blocks(backend, title)
    blocks.queue(default_concurrency_limit=1, max_size=64)
    blocks.launch(server_name=host, server_port=port, css=CSS, show_error=True, prevent_thread_lock=True, quiet=True)
    return blocks
