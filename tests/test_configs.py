"""Every shipped training config loads, validates, and names an existing preset."""

from pathlib import Path

import pytest

from patseg.config import ConfigError, list_presets, load_preset, parse_assignments
from patseg.engine.train_config import load_train_config, model_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_every_preset_has_a_config():
    names = {c.stem for c in CONFIGS}
    full_size = {p for p in list_presets() if not p.endswith("_tiny")}
    assert full_size <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_the_paper_recipe(path):
    cfg = load_train_config(path)
    mcfg = model_config(cfg)
    assert mcfg.name == path.stem
    assert cfg.solver.lr == pytest.approx(1e-4) and cfg.solver.weight_decay == pytest.approx(1e-4)
    assert cfg.solver.grad_clip == pytest.approx(0.01)
    if mcfg.is_pat:
        assert (cfg.solver.iters, cfg.solver.batch_size) == (120000, 12)
        assert mcfg.pat.codebook_sizes == (128, 64, 32) and mcfg.pat.latent_codebook_size == 256
    else:
        assert (cfg.solver.iters, cfg.solver.batch_size) == (60000, 32)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_file_paths_are_run_options_not_model_keys(path):
    """CLIP and LPIPS files are training keys under model: (set by --clip-weights / --lpips-weights), left empty."""
    cfg = load_train_config(path)
    assert cfg.model.clip_weights is None and cfg.model.lpips_weights is None
    assert not any("weights" in key for key in cfg.model.overrides)
    assert "clip_weights: null" in path.read_text()


def test_unknown_key_and_wrong_type_name_the_key(tmp_path):
    for items, key in (
        (["solver.lrr=1"], "'solver.lrr'"),
        (["solver.iters=many"], "'solver.iters'"),
        (["model.preset=pat_tiny", "pat.vmff=false"], "'pat.vmff'"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_train_config(CONFIGS[0], parse_assignments(items))


def test_deep_supervision_is_checked_when_the_record_is_read():
    """SAN needs one supervised block (its last is SAN's prediction); PAT may have none. Blocks lie in 1..depth."""
    assert load_preset("san_tiny", {"side.deep_supervision": [2, 4]}).side.deep_supervision == (2, 4)
    assert load_preset("pat_tiny", {"side.deep_supervision": []}).side.deep_supervision == ()
    with pytest.raises(ConfigError, match=r"'side\.deep_supervision' must name at least one block"):
        load_preset("san_tiny", {"side.deep_supervision": []})
    for preset in ("san_tiny", "pat_tiny"):
        with pytest.raises(ConfigError, match=r"'side\.deep_supervision' entries must lie in 1\.\.4"):
            load_preset(preset, {"side.deep_supervision": [3, 5]})
        with pytest.raises(ConfigError, match=r"'side\.deep_supervision' entries must lie in 1\.\.6"):
            load_preset(preset, {"side.depth": 6, "side.deep_supervision": [0, 6]})
