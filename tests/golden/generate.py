"""Golden outputs of every preset: a fixed-seed forward (and, for the tiny presets, training losses) on small inputs.

The weights are filled deterministically per state-dict key (a generator seeded by the key's CRC32), so the numbers
depend on what the model computes and on its parameter names, not on the order in which modules happen to be
constructed. A refactor that changes neither keeps every number; ``tests/golden/test_golden.py`` checks that.

Regenerate (only after a change that is meant to alter numbers; say why in the commit):

    python tests/golden/generate.py            # writes tests/golden/presets.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
GOLDEN_FILE = HERE / "presets.json"
TINY = ("san_tiny", "pat_tiny", "pat_tiny_pixels_clip")
# Records that are a preset with overrides: the former decoder reading stays pinned beside the default.
VARIANTS = {"pat_tiny_pixels_clip": ("pat_tiny", {"pat.decoder": "pixels", "pat.pyramid_base": "clip"})}
FULL = ("san_vitb16", "san_vitl14", "san_evab16", "pat_vitb16_clip", "pat_vitb16_evaclip", "pat_vitl14_clip")
VOCAB = ("sky", "tree", "road", "person")
SEED = 1234


def deterministic_fill(model: torch.nn.Module) -> None:
    """Overwrite every non-constant floating tensor of the state dict from a generator seeded by its key."""
    state = model.state_dict()
    with torch.no_grad():
        for key in sorted(state):
            t = state[key]
            if not t.is_floating_point() or t.numel() == 0:
                continue
            flat = t.flatten()
            if key.endswith("logit_scale") or (flat.numel() > 1 and bool((flat == flat[0]).all())):
                continue  # constants (LayerNorm ones, zero biases, CLIP's scale) do not depend on the RNG order
            g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
            t.copy_((torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.05).to(t.dtype))


def digest(t: torch.Tensor) -> dict[str, Any]:
    """Shape, sums and the first values of a tensor (float64), enough to catch any numeric change."""
    x = t.detach().double().flatten()
    return {
        "shape": list(t.shape),
        "sum": float(x.sum()),
        "abs_sum": float(x.abs().sum()),
        "head": [float(v) for v in x[:6]],
    }


def image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    return torch.rand(2, 3, size, size, generator=g)


def labels(size: int, num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + 1)
    coarse = torch.randint(0, num_classes, (2, 1, 4, 4), generator=g).float()
    out = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    out[:, :3, :3] = 255
    return out


def record(name: str) -> dict[str, Any]:
    from golden_api import build, class_embeddings, training_losses  # the one file that names the API

    tiny = name in TINY
    size = 64
    preset, overrides = VARIANTS.get(name, (name, {}))
    model = build(preset, overrides)
    deterministic_fill(model)
    model.eval()
    emb = class_embeddings(model, list(VOCAB))
    out: dict[str, Any] = {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
        "text": digest(emb),
    }
    x = image(size)
    with torch.no_grad():
        pred = model(x, emb)
    out["masks"] = digest(pred.main.masks)
    out["logits"] = digest(pred.main.logits)
    if hasattr(pred, "quant"):
        out["codes"] = {k: digest(q.indices.float()) for k, q in sorted(pred.quant.items())}
        with torch.no_grad():
            rec = model(x, emb, reconstruct=True).reconstruction
        out["reconstruction"] = digest(rec)
    if tiny:
        model.train()
        torch.manual_seed(SEED)
        losses = training_losses(model, x, labels(size, len(VOCAB)), emb)
        out["losses"] = {k: float(v) for k, v in sorted(losses.items())}
    return out


def generate(names: tuple[str, ...]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {name: record(name) for name in names}


def main() -> int:
    os.environ.setdefault("PATSEG_CACHE", tempfile.mkdtemp(prefix="patseg-golden-"))
    sys.path.insert(0, str(HERE))
    data = generate(TINY + FULL)
    GOLDEN_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
