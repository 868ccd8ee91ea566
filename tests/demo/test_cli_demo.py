"""`patseg demo` as a command: it serves on 127.0.0.1 and stops on Ctrl-C, chooses its models from the options, and
says what is wrong (no Gradio, a taken port, options that do not fit)."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from patseg.build import build_model
from patseg.cli import main
from patseg.weights.files import save_weights

SRC = Path(__file__).parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, stderr=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "patseg", "demo", "--port", str(port)]
    # SIGINT back to its default in the child, whatever the test runner's own setting, so Python turns it into
    # KeyboardInterrupt as in a terminal.
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_demo_serves_the_page_on_localhost_and_stops_on_ctrl_c(tmp_path):
    port = _free_port()
    log = (tmp_path / "stderr.txt").open("w")  # a file, not a pipe nobody reads, so the child never blocks on it
    proc = _start(port, stderr=log)
    try:
        line = proc.stdout.readline()  # printed once the server listens
        assert line.strip() == f"patseg demo: open http://127.0.0.1:{port} in a browser (Ctrl-C stops the server)"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = json.loads(response.read())  # the page's layout, which the browser renders
        assert config["title"] == "patseg demo"
        assert "SAN-tiny and PAT-tiny" in json.dumps(config)
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "the demo did not stop within 90 s of SIGINT; stderr:\n" + (tmp_path / "stderr.txt").read_text()
            )
        assert code in (0, 130), (tmp_path / "stderr.txt").read_text()
    finally:
        proc.kill()
        proc.wait()
        log.close()


def test_a_taken_port_is_a_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start(port)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().endswith(
        f"patseg: error: cannot listen on 127.0.0.1:{port} (in use, or not an address of "
        "this machine): choose another --port or --host"
    )
    assert "Traceback" not in err


def test_without_gradio_it_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    assert main(["demo"]) == 2
    assert "needs Gradio, which the demo extra installs: pip install 'patseg[demo]'" in capsys.readouterr().err


def test_clip_weights_alone_are_refused(capsys):
    assert main(["demo", "--clip-weights", "ViT-B-16.bin"]) == 2
    assert "--clip-weights and --set go with --weights or --preset" in capsys.readouterr().err


@pytest.mark.parametrize("with_file", [True, False])
def test_weights_or_preset_serve_that_one_model_with_benchmark_vocabularies(tmp_path, monkeypatch, with_file):
    served = {}

    class Blocks:
        def block_thread(self):
            served["blocked"] = True

        def close(self):
            served["closed"] = True

    def fake_serve(backend, title, host, port):
        served.update(backend=backend, title=title, host=host, port=port)
        return Blocks()

    monkeypatch.setattr("patseg.demo.app.serve", fake_serve)
    argv = ["demo", "--port", "9000", "--short-side", "64"]
    if with_file:
        weights = tmp_path / "mine.safetensors"
        save_weights(build_model("san_tiny"), weights)
        argv += ["--weights", str(weights)]
    else:
        argv += ["--preset", "san_tiny"]
    assert main(argv) == 0
    backend = served["backend"]
    assert list(backend.models) == ["san_tiny"] and backend.world is None
    assert (backend.short_side, backend.max_long_side) == (64, 256)
    assert served["title"] == (
        "Model: san_tiny from mine.safetensors" if with_file else "Model: san_tiny (random weights)"
    )
    assert (served["host"], served["port"], served["blocked"], served["closed"]) == ("127.0.0.1", 9000, True, True)
