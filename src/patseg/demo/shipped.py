"""The demo's built-in models: SAN-tiny and PAT-tiny trained by OVSS-mini on its generated world, shipped as float16.

They let ``patseg demo`` segment something meaningful with no download: the world's scenes, its seen concepts and,
zero-shot, its unseen ones. Both sit on the shipped mini CLIP (``patseg/resources/mini_clip``), so a change to the
world, to the mini CLIP or to the tiny presets makes them stale; ``models.json`` records all three and
:func:`stale_reasons` compares them with the current code (a test does, and loading refuses stale files).

Regenerate them (about 10 minutes on 2 CPU cores) with::

    python -m patseg.demo.shipped
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from patseg.atomic import atomic_save_safetensors, atomic_write_text
from patseg.build import build_model
from patseg.config import load_preset, to_dict
from patseg.errors import CheckpointError
from patseg.mini import clip_pretrain
from patseg.mini.benchmark import FULL, MINI_CLIP, MiniRun, MiniSettings, run_one
from patseg.mini.world import WorldConfig, world_hash
from patseg.models.san.model import SAN
from patseg.resources import RESOURCE_DIR
from patseg.weights.files import architecture_metadata, state_to_save

SHIPPED_DIR = RESOURCE_DIR / "demo"
META_FILE = "models.json"
REGENERATE = "python -m patseg.demo.shipped"
# Display name -> preset; the order is the page's left-to-right order.
MODELS = {"SAN-tiny": "san_tiny", "PAT-tiny": "pat_tiny"}
SEED = 0


def mini_clip_file() -> Path:
    """The shipped mini CLIP that the demo models were trained on (whatever PATSEG_NO_SHIPPED_MINI_CLIP says)."""
    return clip_pretrain.SHIPPED_DIR / clip_pretrain.WEIGHTS_FILE


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_record(preset: str) -> dict[str, Any]:
    """The architecture a demo model has today: the tiny preset on the mini CLIP, as a plain dict."""
    return to_dict(load_preset(preset, dict(MINI_CLIP)))


def fingerprint() -> dict[str, Any]:
    """What the shipped weights depend on: the world, the mini CLIP file and each preset's record."""
    return {
        "world_hash": world_hash(WorldConfig()),
        "mini_clip_sha256": file_sha256(mini_clip_file()),
        "configs": {name: model_record(preset) for name, preset in MODELS.items()},
    }


def read_meta(directory: Path = SHIPPED_DIR) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the demo's models were not generated; run `{REGENERATE}`")
    return json.loads(path.read_text(encoding="utf-8"))


def stale_reasons(directory: Path = SHIPPED_DIR) -> list[str]:
    """Why the shipped models no longer fit the code (empty when they do)."""
    meta, now = read_meta(directory), fingerprint()
    reasons = []
    if meta.get("world_hash") != now["world_hash"]:
        reasons.append(f"the OVSS-mini world changed ({meta.get('world_hash')} -> {now['world_hash']})")
    if meta.get("mini_clip_sha256") != now["mini_clip_sha256"]:
        reasons.append("the shipped mini CLIP was regenerated")
    for name, config in now["configs"].items():
        if meta.get("models", {}).get(name, {}).get("config") != config:
            reasons.append(f"the {MODELS[name]} preset (or the mini CLIP config) changed")
    for name in MODELS:
        file = directory / meta.get("models", {}).get(name, {}).get("file", f"{MODELS[name]}.safetensors")
        if not file.is_file():
            reasons.append(f"{file} is missing")
    return reasons


def load_shipped(device: str | torch.device = "cpu", directory: Path = SHIPPED_DIR) -> dict[str, SAN]:
    """Display name -> trained model (float32, eval mode) on ``device``.

    Raises:
        CheckpointError: the files are missing or stale, naming the command that regenerates them.
    """
    reasons = stale_reasons(directory)
    if reasons:
        raise CheckpointError(
            f"the demo's built-in models in {directory} are out of date: "
            + "; ".join(reasons)
            + f". Run `{REGENERATE}`"
        )
    meta = read_meta(directory)
    clip = str(mini_clip_file())
    models = {}
    for name in MODELS:
        model = build_model(weights=str(directory / meta["models"][name]["file"]), clip_weights=clip)
        models[name] = model.to(device).eval()
    return models


def save_half(model: SAN, path: Path) -> Path:
    """The trained (not frozen) tensors as float16 safetensors with the architecture record."""
    state = state_to_save(model, include_frozen=False)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return atomic_save_safetensors(state, path, metadata=architecture_metadata(model))


def generate(out_dir: Path = SHIPPED_DIR, settings: MiniSettings = FULL, work_dir: Path | None = None) -> dict:
    """Train both models as the full OVSS-mini run does (seed 0), write them as float16 and ``models.json`` last.

    The training runs go to ``work_dir`` (default: a temporary folder, removed afterwards)."""
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="patseg-demo-") as tmp:
            return generate(out_dir, settings, Path(tmp))
    world = WorldConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {**fingerprint(), "seed": SEED, "settings": asdict(settings), "models": {}}
    configs = record.pop("configs")
    for name, preset in MODELS.items():
        start = time.perf_counter()
        model, metrics = run_one(MiniRun(name, preset), SEED, world, settings, mini_clip_file(), work_dir / preset)
        file = f"{preset}.safetensors"
        save_half(model, out_dir / file)
        record["models"][name] = {
            "preset": preset,
            "file": file,
            "config": configs[name],
            "train_seconds": round(time.perf_counter() - start, 1),
            "miou": {k: round(float(metrics[k]), 2) for k in ("seen", "unseen", "all", "hIoU")},
        }
        miou = " / ".join(f"{v:.1f}" for v in record["models"][name]["miou"].values())
        print(f"{name}: mIoU seen / unseen / all / hIoU {miou}", flush=True)
    atomic_write_text(out_dir / META_FILE, json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train the demo's built-in SAN-tiny and PAT-tiny on the OVSS-mini world and write them (float16) "
        "with models.json into patseg/resources/demo."
    )
    parser.add_argument("--out-dir", type=Path, default=SHIPPED_DIR)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the training runs here (default: a temporary folder)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generate(args.out_dir, FULL, args.work_dir)


if __name__ == "__main__":
    main()
