"""The demo's built-in models: they fit the code they ship with, they were trained, and they regenerate."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from safetensors import safe_open

from patseg.demo import shipped
from patseg.errors import CheckpointError
from patseg.mini.benchmark import FULL
from patseg.mini.evaluate import VAL_SEED
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig
from patseg.predictor import Segmenter


def test_shipped_models_fit_the_world_the_mini_clip_and_the_presets():
    # Fails when the world, the shipped mini CLIP or a tiny preset changes without `python -m patseg.demo.shipped`.
    assert shipped.stale_reasons() == []


def test_shipped_files_are_float16_and_small():
    meta = shipped.read_meta()
    total = 0
    for name, preset in shipped.MODELS.items():
        path = shipped.SHIPPED_DIR / meta["models"][name]["file"]
        total += path.stat().st_size
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}
            assert f.metadata()["patseg_config"]  # the architecture record: build_model needs no --preset
        assert {str(d) for d in dtypes if d.is_floating_point} == {"torch.float16"}, name
    assert total < 8 * 2**20


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("world_hash", "0000", "world changed"),
        ("mini_clip_sha256", "0000", "mini CLIP was regenerated"),
    ],
)
def test_stale_files_are_refused_with_the_command_that_regenerates_them(tmp_path, key, value, reason):
    copy = tmp_path / "demo"
    shutil.copytree(shipped.SHIPPED_DIR, copy)
    meta = json.loads((copy / shipped.META_FILE).read_text())
    meta[key] = value
    (copy / shipped.META_FILE).write_text(json.dumps(meta))
    assert any(reason in r for r in shipped.stale_reasons(copy))
    with pytest.raises(CheckpointError, match="python -m patseg.demo.shipped"):
        shipped.load_shipped("cpu", copy)


def test_a_changed_preset_makes_them_stale(tmp_path, monkeypatch):
    copy = tmp_path / "demo"
    shutil.copytree(shipped.SHIPPED_DIR, copy)
    record = shipped.model_record
    monkeypatch.setattr(
        shipped, "model_record", lambda p: {**record(p), "num_queries": 7} if p == "pat_tiny" else record(p)
    )
    assert shipped.stale_reasons(copy) == ["the pat_tiny preset (or the mini CLIP config) changed"]


def test_missing_files_name_the_command(tmp_path):
    with pytest.raises(CheckpointError, match="python -m patseg.demo.shipped"):
        shipped.load_shipped("cpu", tmp_path)


def test_shipped_models_segment_the_world_far_above_chance(backend):
    # The float16 weights, loaded into float32 models, still do what training made them do: most pixels of the
    # evaluation scenes get their concept (chance is 1 in len(names)).
    world = WorldConfig()
    names = list(world.concept_names)
    val = SyntheticSegmentation(world, "val", 6, FULL.image_size, VAL_SEED)
    for name, model in backend.models.items():
        segmenter = Segmenter(model, names, short_side=FULL.image_size)
        correct = total = 0
        for i in range(len(val)):
            item = val[i]
            pred = segmenter.predict(item["image"].permute(1, 2, 0).numpy())
            correct += int((pred == item["label"].numpy()).sum())
            total += pred.size
        assert correct / total > 0.4, (name, correct / total)


def test_generate_writes_models_that_load(tmp_path):
    tiny = replace(FULL, iters=2, train_scenes=8, val_scenes=2, batch_size=2)
    record = shipped.generate(tmp_path / "demo", tiny, tmp_path / "work")
    assert set(record["models"]) == set(shipped.MODELS)
    assert shipped.stale_reasons(tmp_path / "demo") == []
    models = shipped.load_shipped("cpu", tmp_path / "demo")
    assert [type(m).__name__ for m in models.values()] == ["SAN", "PAT"]
    for name, model in models.items():
        assert all(p.dtype.is_floating_point and str(p.dtype) == "torch.float32" for p in model.parameters())
        assert np.isfinite(record["models"][name]["miou"]["all"])
