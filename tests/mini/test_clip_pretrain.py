"""Mini CLIP pretraining: losses against float64 loops, views, the model config, and the cache end to end."""

import json
import math

import numpy as np
import open_clip
import pytest
import torch

from patseg.errors import CheckpointError
from patseg.mini import clip_pretrain as cp
from patseg.mini.world import WorldConfig, world_hash

WORLD = WorldConfig()


def _reference_info_nce(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    n = len(img)
    logits = [[scale * sum(img[i, d] * txt[j, d] for d in range(img.shape[1])) for j in range(n)] for i in range(n)]
    i2t = sum(-logits[i][i] + math.log(sum(math.exp(logits[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def _reference_concept_loss(img, con, scale, targets, valid) -> float:
    total = 0.0
    for i in range(len(img)):
        logits = {k: scale * float(img[i] @ con[k]) for k in range(len(con)) if valid[i, k]}
        log_z = math.log(sum(math.exp(v) for v in logits.values()))
        positives = [k for k in logits if targets[i, k]]
        total += sum(-(logits[k] - log_z) for k in positives) / len(positives)
    return total / len(img)


def _unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_clip_contrastive_loss_matches_loops():
    img, txt = _unit(5, 7), _unit(5, 7)
    got = cp.clip_contrastive_loss(img, txt, torch.tensor(9.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_reference_info_nce(img.numpy(), txt.numpy(), 9.0), rel=1e-10)


def test_concept_loss_matches_loops_and_ignores_invalid():
    img, con = _unit(4, 6), _unit(5, 6)
    targets = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    valid = targets | torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]).bool()
    got = cp.concept_loss(img, con, torch.tensor(7.0, dtype=torch.float64), targets, valid)
    want = _reference_concept_loss(img.numpy(), con.numpy(), 7.0, targets.numpy(), valid.numpy())
    assert got.item() == pytest.approx(want, rel=1e-10)
    con2 = con.clone()
    con2[3] = -con2[3]  # concept 3 is invalid for rows 0 and 2 only, so changing it must change the loss
    assert cp.concept_loss(img, con2, torch.tensor(7.0), targets, valid).item() != pytest.approx(got.item())


def test_average_precision():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert cp._average_precision(scores, np.array([1, 0, 1, 0, 0], bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert cp._average_precision(scores, np.array([0, 0, 0, 0, 1], bool)) == pytest.approx(1 / 5)
    assert math.isnan(cp._average_precision(scores, np.zeros(5, bool)))


def test_model_config_and_tokenizer():
    model = cp.create_mini_clip()
    cfg = json.loads((cp.CLIP_CONFIG_DIR / "patseg-mini-ViT.json").read_text())
    assert isinstance(model, open_clip.CLIP) and model.visual.image_size == (64, 64)
    assert len(model.visual.transformer.resblocks) == cfg["vision_cfg"]["layers"]
    assert model.text_projection.shape == (cfg["text_cfg"]["width"], cfg["embed_dim"])
    # The config pins QuickGELU, so force_quick_gelu=False/True builds the same network.
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    tokenizer = cp.mini_clip_tokenizer()
    assert tokenizer.context_length == cfg["text_cfg"]["context_length"]
    longest = sorted(WORLD.concept_names, key=lambda n: len(tokenizer.encode(n)))[-6:]
    ids = tokenizer(["a photo of " + ", ".join(longest) + "."])[0]
    assert ids[-1] == 0  # the longest possible caption fits without truncation


def test_sample_views_targets_match_captions():
    model = cp.create_mini_clip()
    batch = cp.sample_views(WORLD, np.random.default_rng(0), model, 6)
    assert batch.images.shape == (6, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.targets.shape == batch.valid.shape == (6, len(WORLD.concept_names))
    assert bool((batch.targets <= batch.valid).all()) and bool((batch.targets.sum(1) >= 1).all())
    for caption, row in zip(batch.captions, batch.targets):
        listed = set(caption[len("a photo of ") : -1].replace(" and ", ", ").split(", "))
        assert listed == {WORLD.concept_names[k] for k in torch.nonzero(row).flatten().tolist()}


def test_training_steps_fit_a_fixed_batch():
    model, tokenizer = cp.create_mini_clip(), cp.mini_clip_tokenizer()
    batch = cp.sample_views(WORLD, np.random.default_rng(1), model, 8)
    prompts = [f"a photo of a {n}." for n in WORLD.concept_names]
    optimizer = cp._optimizer(model, 1e-3)
    losses = []
    for _ in range(5):
        loss = cp._training_step(model, tokenizer, batch, prompts)
        optimizer.zero_grad()
        loss.backward()
        assert model.visual.conv1.weight.grad.abs().sum() > 0 and model.token_embedding.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5  # from ~5.9 (chance) to ~5.1 with seed 0


def test_pretrain_command_writes_a_cache_that_is_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path))
    cp.main(["--steps", "2", "--batch-size", "4", "--eval-scenes", "8", "--threads", "2"])  # the documented command
    weights = tmp_path / "mini_clip" / world_hash(WORLD) / "mini_clip.safetensors"
    assert str(weights) in capsys.readouterr().out
    meta = cp.read_metadata(weights)
    assert meta["world_hash"] == world_hash(WORLD) and meta["steps"] == 2 and math.isfinite(meta["final_loss"])
    assert set(meta["zero_shot"]["per_concept_ap"]) == set(WORLD.concept_names)
    assert WorldConfig.from_dict(meta["world"]) == WORLD
    assert sorted(p.name for p in weights.parent.iterdir()) == ["mini_clip.json", "mini_clip.safetensors"]

    loaded = cp.create_mini_clip(weights)  # open_clip's own loader, strict
    assert not torch.equal(loaded.visual.conv1.weight, cp.create_mini_clip().visual.conv1.weight)
    reloaded = open_clip.create_model("patseg-mini-ViT", pretrained=str(weights))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reloaded.state_dict().values()))

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache must not be retrained")

    monkeypatch.setattr(cp, "pretrain_mini_clip", no_training)
    assert cp.load_or_pretrain_mini_clip(WORLD, steps=99, batch_size=4) == weights
    meta["model_config"]["embed_dim"] = 1
    (weights.parent / "mini_clip.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config"):
        cp.load_or_pretrain_mini_clip(WORLD)


def test_missing_weights_error_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="patseg.mini.clip_pretrain"):
        cp.create_mini_clip(tmp_path / "nope.safetensors")


def test_cache_miss_trains_into_the_world_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(cp, "pretrain_mini_clip", lambda world, **kw: calls.append((world, kw)) or "trained")
    assert cp.load_or_pretrain_mini_clip(WORLD, steps=7, batch_size=3, seed=5) == "trained"
    assert calls[0][0] is WORLD and calls[0][1]["out_dir"] == tmp_path / "mini_clip" / world_hash(WORLD)
    assert (calls[0][1]["steps"], calls[0][1]["batch_size"], calls[0][1]["seed"]) == (7, 3, 5)


@pytest.mark.parametrize("object_crops", [0.0, 1.0])
def test_crop_boxes_stay_inside_and_frame_things(monkeypatch, object_crops):
    from patseg.mini.scenes import render_scene, scene_rng

    monkeypatch.setattr(cp, "OBJECT_CROPS", object_crops)
    rng = np.random.default_rng(0)
    for index in range(10):
        label = render_scene(WORLD, scene_rng(0, "crop", index), 128).label
        y0, x0, side = cp._crop_box(label, WORLD.num_stuff, rng)
        assert 0 <= y0 <= 128 - side and 0 <= x0 <= 128 - side
        crop = label[y0 : y0 + side, x0 : x0 + side]
        if object_crops:
            assert side >= 32 and (crop >= WORLD.num_stuff).mean() > 0.05  # a thing fills a good part of it
        else:
            assert np.sqrt(0.35) * 128 - 1 <= side <= 128


def test_shipped_mini_clip_matches_the_default_world(monkeypatch):
    """The committed mini CLIP must be regenerated when the world or the model config changes:
    python -m patseg.mini.clip_pretrain --half --out-dir src/patseg/resources/mini_clip"""
    import json

    from patseg.mini import clip_pretrain
    from patseg.mini.world import WorldConfig, world_hash

    monkeypatch.delenv("PATSEG_NO_SHIPPED_MINI_CLIP", raising=False)
    meta = json.loads((clip_pretrain.SHIPPED_DIR / clip_pretrain.META_FILE).read_text())
    assert meta["world_hash"] == world_hash(WorldConfig())
    assert meta["model_config"] == clip_pretrain._model_config()
    assert clip_pretrain.shipped_mini_clip(WorldConfig()) == clip_pretrain.SHIPPED_DIR / clip_pretrain.WEIGHTS_FILE
    model = clip_pretrain.create_mini_clip(clip_pretrain.SHIPPED_DIR / clip_pretrain.WEIGHTS_FILE)
    assert next(model.parameters()).dtype.is_floating_point
