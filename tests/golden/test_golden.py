"""Every preset still computes what it computed when ``tests/golden/presets.json`` was written.

The tiny presets (forward, reconstruction, codes and training losses) run in the default suite; the full-size
presets (forward at 64x64 with deterministic weights) under ``-m slow``. Regenerate with
``python tests/golden/generate.py`` only for a change that is meant to alter numbers.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402

GOLDEN = json.loads(generate.GOLDEN_FILE.read_text())


def assert_close(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for k in expected:
            assert_close(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=1e-4, abs_tol=1e-5), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual} != {expected}"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path))


@pytest.mark.parametrize("name", generate.TINY)
def test_tiny_preset_matches_golden(name: str) -> None:
    assert_close(generate.generate((name,))[name], GOLDEN[name], name)


@pytest.mark.slow
@pytest.mark.parametrize("name", generate.FULL)
def test_full_size_preset_matches_golden(name: str) -> None:
    assert_close(generate.generate((name,))[name], GOLDEN[name], name)
