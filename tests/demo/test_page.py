"""The page's events as functions (no server): what the page shows for good and bad input."""

import numpy as np
import pytest
from PIL import Image

from patseg.demo.backend import LegendEntry, enlarge
from patseg.demo.page import (
    heat_view,
    legend_html,
    scene_view,
    segment_view,
    upload_view,
    vocabulary_presets,
)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_upload_is_segmented_by_every_model(backend, photo):
    view = upload_view(backend, str(photo), "grass, sky, red circle")
    assert view.status.startswith("Segmented photo.png with 3 class names (SAN-tiny ")
    assert set(view.answers) == {"SAN-tiny", "PAT-tiny"}
    assert view.heat_class == view.answers["SAN-tiny"].legend[0].name
    assert all(view.heat[n].image.shape == (90, 120, 3) for n in view.answers)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"hello", "not a readable image"), (b"\x89PNG\r\n\x1a\n\x00\x00", "not a readable image")],
)
def test_bad_uploads_get_a_message_and_no_answers(backend, tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    view = upload_view(backend, str(path), "grass")
    assert view.status.startswith("**Cannot read the upload:** bad.png") and message in view.status
    assert view.answers == {} and view.picture is None


def test_no_file_and_no_picture(backend):
    assert "upload an image" in upload_view(backend, None, "grass").status
    assert segment_view(backend, None, "grass").status.startswith("**Give an image first:**")


def test_bad_vocabulary_keeps_the_picture_and_says_why(backend):
    view = scene_view(backend, 0, "grass, grass")
    assert view.status == (
        "**Cannot segment:** the vocabulary repeats class names ('grass' at positions 1, 2): give each class once"
    )
    assert view.picture is not None and view.answers == {}


def test_large_upload_is_resized_and_the_status_says_so(backend, tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((200, 1600, 3), np.uint8)).save(path)
    view = upload_view(backend, str(path), "sky")
    assert "it was resized to 512 x 64" in view.status
    assert view.answers["PAT-tiny"].labels.shape == (64, 512)


def test_legend_lists_classes_escaped_and_marks_unseen():
    class Answer:
        legend = [LegendEntry("red <circle>", (215, 35, 35), 61.25, True), LegendEntry("sky", (1, 2, 3), 38.75)]

    text = legend_html(Answer())  # type: ignore[arg-type]
    assert "red &lt;circle&gt; (61.2%)" in text and "sky (38.8%)" in text
    assert text.count('class="unseen"') == 1 and "rgb(215,35,35)" in text


def test_heat_view_follows_the_picked_class(backend):
    view = scene_view(backend, 0, backend.default_vocabulary)
    maps = heat_view(backend, view.answers, "sky")
    assert set(maps) == set(view.answers)
    assert view.heat_class != "sky" and {m.class_name for m in maps.values()} == {"sky"}
    assert not np.array_equal(maps["SAN-tiny"].image, view.heat["SAN-tiny"].image)
    assert heat_view(backend, view.answers, "no such class") == {}
    assert heat_view(backend, {}, "sky") == {}


def test_presets_and_enlarge(backend):
    presets = vocabulary_presets(backend)
    assert presets["World: all concepts"] == backend.default_vocabulary
    assert presets["World: unseen only"] == ", ".join(backend.world.unseen_names)
    small = np.arange(12, dtype=np.uint8).reshape(3, 4)
    big = enlarge(small, 16)
    assert big.shape == (12, 16) and (big[::4, ::4] == small).all()
    assert enlarge(np.zeros((500, 20)), 384).shape == (500, 20)


def test_the_gradio_page_builds_and_show_fills_every_output(backend):
    import gradio as gr

    from patseg.demo.app import DemoApp

    with gr.Blocks():
        app = DemoApp(backend, "test")
        app.wire()
    view = scene_view(backend, 0, backend.default_vocabulary)
    values = app.show(view)
    assert len(values) == len(app.outputs)
    assert values[0] == view.status and values[3] is view.answers
    assert len(app.show(upload_view(backend, None, "sky"))) == len(app.outputs)
