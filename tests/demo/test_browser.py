"""The demo in a real browser: Debian's headless Chromium, driven by Playwright, against `patseg demo`'s server on
127.0.0.1 with the built-in models.

Needs the ``chromium`` package (``.ci/run`` installs it). Without it the test is skipped, unless
PATSEG_REQUIRE_BROWSER=1 (set by CI) makes that a failure. PATSEG_DEMO_SCREENSHOT=FILE also copies the screenshot
there, in 256 colours (how docs/demo.png is made).
"""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patseg.demo.backend import BUILTIN_TITLE, SCENE_SPLIT, Picture
from patseg.mini.scenes import render_scene, scene_rng

CHROMIUM = os.environ.get("PATSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The flags a closed network needs: no background connections, no first-run or component downloads.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DISTRACTORS = ("sky", "red circle", "blue square")


def _chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("PATSEG_REQUIRE_BROWSER"):
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (apt-get install chromium)")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; CI sets PATSEG_REQUIRE_BROWSER=1)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(backend):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from patseg.demo.app import serve

    port = _free_port()
    blocks = serve(backend, BUILTIN_TITLE, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


def test_the_page_segments_an_upload_and_survives_a_bad_one(backend, server, tmp_path):
    browser_path = _chromium()
    from playwright.sync_api import expect, sync_playwright

    scene = backend.scene(4)
    # The vocabulary typed: the concepts the scene holds (from its ground truth) and a few it does not.
    truth = render_scene(backend.world, scene_rng(0, SCENE_SPLIT, 4), backend.short_side)
    present = [backend.world.concept_names[i] for i in truth.present]
    vocabulary = ", ".join(present + [d for d in DISTRACTORS if d not in present])
    photo = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(photo)
    expected = backend.segment(Picture(scene.image, "scene.png"), vocabulary)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    shot = tmp_path / "demo.png"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        busy = page.locator("[data-testid=status-tracker]:not(.hide)")  # Gradio's "processing" veils
        status = page.locator("#status")
        page.locator("#upload input[type=file]").set_input_files(str(photo))  # runs with the default vocabulary
        default = len(backend.world.concept_names)
        expect(status).to_contain_text(f"Segmented scene.png with {default} class names", timeout=60_000)
        page.locator("#vocabulary textarea").fill(vocabulary)
        page.locator("#segment").click()
        n = len(vocabulary.split(","))
        expect(status).to_contain_text(f"Segmented scene.png with {n} class names", timeout=60_000)
        expect(busy).to_have_count(0, timeout=30_000)
        expect(page.locator("#overlay-0 img")).to_be_visible()
        expect(page.locator("#overlay-1 img")).to_be_visible()
        for i, answer in enumerate(expected.values()):
            legend = page.locator(f"#legend-{i} li")
            expect(legend).to_have_count(len(answer.legend))
            shown = [text.rsplit(" (", 1)[0] for text in legend.all_inner_texts()]
            assert shown == [e.name for e in answer.legend]
        expect(page.locator("#reconstruction img")).to_be_visible()
        page.screenshot(path=str(shot), full_page=True)

        page.locator("#upload button[aria-label=Clear]").click()  # the file box takes a new file once cleared
        page.locator("#upload input[type=file]").set_input_files(str(broken))
        expect(status).to_contain_text("Cannot read the upload: broken.jpg", timeout=30_000)
        page.locator("#vocabulary textarea").fill("sky, sky")
        page.locator("#segment").click()
        expect(status).to_contain_text("repeats class names", timeout=30_000)
        page.locator("#vocabulary textarea").fill("sky, grass")
        page.locator("#segment").click()  # the server lived through both
        expect(status).to_contain_text("Segmented scene.png with 2 class names", timeout=30_000)
        browser.close()

    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and np.asarray(im).std() > 10
    if os.environ.get("PATSEG_DEMO_SCREENSHOT"):  # 256 colours keep the README's picture small
        with Image.open(shot) as im:
            im.convert("RGB").quantize(256).save(os.environ["PATSEG_DEMO_SCREENSHOT"], optimize=True)
