"""OVSS-mini's evaluation, figure and pairing on the shipped mini CLIP with briefly trained tiny models."""

from dataclasses import replace

import numpy as np
import pytest

from patseg.mini import benchmark
from patseg.mini.benchmark import QUICK, MiniRun, run_one
from patseg.mini.clip_pretrain import SHIPPED_DIR, WEIGHTS_FILE
from patseg.mini.evaluate import MiniClipEmbedder, evaluate_mini
from patseg.mini.figure import make_figure
from patseg.mini.scenes import SyntheticSegmentation
from patseg.mini.world import WorldConfig

CLIP = SHIPPED_DIR / WEIGHTS_FILE
WORLD = WorldConfig()
TINY = replace(QUICK, iters=2, train_scenes=16, val_scenes=3, batch_size=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {
        name: run_one(MiniRun(name, preset), 0, WORLD, TINY, CLIP, out / preset)[0]
        for name, preset in (("SAN", "san_tiny"), ("PAT", "pat_tiny"))
    }


def test_san_and_pat_with_one_seed_see_the_same_scenes_in_the_same_order(tmp_path, monkeypatch):
    seen: dict[str, list] = {"san_tiny": [], "pat_tiny": []}
    current = []
    original = SyntheticSegmentation.__getitem__

    def record(self, index):
        if self.split == "train":
            current.append(index)
        return original(self, index)

    monkeypatch.setattr(SyntheticSegmentation, "__getitem__", record)
    monkeypatch.setattr(benchmark, "evaluate_mini", lambda *args, **kwargs: {})
    settings = replace(TINY, iters=3)
    for preset in seen:
        current.clear()
        run_one(MiniRun(preset, preset), 4, WORLD, settings, CLIP, tmp_path / preset)
        seen[preset] = list(current)
    assert len(seen["san_tiny"]) == 3 * settings.batch_size
    assert seen["san_tiny"] == seen["pat_tiny"]


def test_evaluation_measures_masks_boundaries_and_pat_tokenizer(models):
    embedder = MiniClipEmbedder(CLIP)
    san = evaluate_mini(models["SAN"], WORLD, 3, 128, embedder)
    pat = evaluate_mini(models["PAT"], WORLD, 3, 128, embedder)
    for metrics in (san, pat):
        for key in ("seen", "unseen", "all", "hIoU", "bIoU_seen", "bIoU_unseen", "bIoU_all"):
            assert np.isnan(metrics[key]) or 0.0 <= metrics[key] <= 100.0, key
    assert "tokenizer" not in san
    tok = pat["tokenizer"]
    assert set(tok["codebooks"]) == {"early", "mid", "late", "latent"}
    for stage, usage in tok["codebooks"].items():
        assert usage["used"] + usage["dead"] == usage["size"]
        assert 1.0 <= usage["perplexity"] <= usage["used"] + 1e-9
    options = models["PAT"].config.pat
    assert [tok["codebooks"][s]["size"] for s in ("early", "mid", "late")] == list(options.codebook_sizes)
    assert tok["codebooks"]["latent"]["size"] == options.latent_codebook_size
    assert 0.0 < tok["psnr"] < 60.0 and tok["mini_rfid"] >= 0.0


def test_mini_clip_embedder():
    embedder = MiniClipEmbedder(CLIP)
    images = np.stack(
        [SyntheticSegmentation(WORLD, "val", 2, 128, 0)[i]["image"].permute(1, 2, 0).numpy() for i in range(2)]
    )
    emb = embedder(images, batch=1)
    assert emb.shape == (2, 128) and emb.dtype == np.float64  # the tower embeds into 128 dimensions
    assert not np.allclose(emb[0], emb[1])
    np.testing.assert_allclose(embedder(images[:1]), emb[:1], rtol=1e-5, atol=1e-6)


def test_figure_has_a_legend_and_the_reconstruction(models):
    figure = make_figure(WORLD, 128, models, num_scenes=2, cell=64)
    columns = 2 + 2 + 2  # image, truth, SAN, PAT, PAT tokens, PAT reconstruction
    assert figure.width == columns * (64 + 4)
    grid_height = 2 * (64 + 4) + 18
    assert figure.height > grid_height + 20  # the legend rows below the grid
    legend = np.asarray(figure)[grid_height:]
    assert (legend < 128).any()  # text and swatch outlines are drawn
