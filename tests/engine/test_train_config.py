"""Training config: YAML + ``--set`` assignments (training keys and model keys), with errors that name the key."""

import pytest

from patseg.config import ConfigError, parse_assignments
from patseg.engine.train_config import (
    TrainConfig,
    dump_train_config,
    load_train_config,
    model_config,
    split_assignments,
    train_config_from_dict,
)


def load(path=None, *items):
    return load_train_config(path, parse_assignments(items))


def test_defaults_follow_the_paper_recipe():
    cfg = load_train_config()
    assert cfg == TrainConfig()
    s = cfg.solver
    recipe = (s.lr, s.weight_decay, s.iters, s.batch_size, s.grad_clip, s.poly_power)
    assert recipe == (1e-4, 1e-4, 120000, 12, 0.01, 0.9)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "solver:\n  lr: 2e-4\n  amp: fp16\nmodel:\n  preset: san_vitb16\n  overrides:\n"
        "    pat: {vmf: false}\neval:\n  datasets: [ade20k_150]\n"
    )
    cfg = load(path, "solver.iters=10", "log.period=5", "model.overrides.pat.kappa=20", "output_dir=/tmp/x y")
    assert cfg.solver.lr == 2e-4 and isinstance(cfg.solver.lr, float)  # "2e-4" is a float, not a string
    assert (cfg.solver.amp, cfg.solver.iters, cfg.log.period) == ("fp16", 10, 5)
    assert cfg.model.overrides == {"pat.vmf": False, "pat.kappa": 20}
    assert cfg.eval.datasets == ("ade20k_150",) and cfg.output_dir == "/tmp/x y"
    mc = model_config(cfg)
    assert mc.pat is not None and mc.pat.vmf is False and mc.pat.kappa == 20.0
    again = tmp_path / "again.yaml"
    again.write_text(dump_train_config(cfg))
    assert load_train_config(again) == cfg


def test_model_keys_join_the_yaml_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  preset: pat_tiny\n  overrides:\n    pat: {vmf: false, kappa: 20}\n")
    cfg = load(
        path,
        "pat.kappa=10",
        "loss.vq_weight=1e-4",
        "pat.stage_scales=[4,4,4]",
        "solver.iters=7",
        "model.clip_weights=ViT-B-16.bin",
        "model.lpips_weights=vgg.pth",
    )
    assert cfg.model.overrides == {
        "pat.vmf": False,
        "pat.kappa": 10,
        "loss.vq_weight": 1e-4,
        "pat.stage_scales": [4, 4, 4],
    }  # the command line wins over the YAML
    assert (cfg.solver.iters, cfg.model.clip_weights, cfg.model.lpips_weights) == (7, "ViT-B-16.bin", "vgg.pth")
    mc = model_config(cfg)
    assert (mc.pat.vmf, mc.pat.kappa, mc.pat.stage_scales, mc.loss.vq_weight) == (False, 10.0, (4, 4, 4), 1e-4)


def test_assignments_are_routed_by_their_first_part():
    keys = split_assignments(
        {
            "solver.lr": 1.0,
            "output_dir": "o",
            "model.preset": "p",
            "pat.vmf": False,
            "model.overrides.side.depth": 3,
            "clip.taps": [0],
        }
    )
    assert keys.train == {"solver.lr": 1.0, "output_dir": "o", "model.preset": "p"}
    assert keys.model == {"pat.vmf": False, "side.depth": 3, "clip.taps": [0]}
    with pytest.raises(ConfigError, match="'solverr.lr'.*training keys start with.*solver.*model keys with.*pat"):
        split_assignments({"solverr.lr": 1})


@pytest.mark.parametrize(
    "override, key",
    [
        ("solver.lrr=1", "solver.lrr"),
        ("bogus=1", "bogus"),
        ("solver.iters=abc", "solver.iters"),
        ("solver.iters=1.5", "solver.iters"),
        ("checkpoint.include_frozen=1", "checkpoint.include_frozen"),
        ("solver.amp=fp8", "solver.amp"),
        ("log.period=0", "log.period"),
        ("solver.lr=-1", "solver.lr"),
        ("eval.datasets=ade", "eval.datasets"),
        ("model.overrides=3", "model.overrides"),
        ("pat.vmff=false", "pat.vmff"),  # model keys are checked against the preset when the config is loaded
        ("model.overrides.loss.vq=1", "loss.vq"),
        ("pat.vmf=1", "pat.vmf"),
        ("model.lpips_weights=3", "model.lpips_weights"),
        ("eval.limit=some", "eval.limit"),
        ("data.crop_size=100", "data.crop_size"),
        ("data.crop_size=0", "data.crop_size"),
        ("solver.batch_size=0", "solver.batch_size"),
        ("solver.iters=-5", "solver.iters"),
        ("checkpoint.period=0", "checkpoint.period"),
        ("eval.period=0", "eval.period"),
        ("eval.limit=0", "eval.limit"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load(None, "model.preset=pat_tiny", override)


def test_weights_and_init_from_exclude_each_other():
    with pytest.raises(ConfigError, match="'model.weights'.*'model.init_from'"):
        load(None, "model.weights=a.safetensors", "model.init_from=san.pth")


def test_bad_yaml_and_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")
    path = tmp_path / "nested.yaml"
    path.write_text("data:\n  crop: 512\n")
    with pytest.raises(ConfigError, match="'data.crop'"):
        load_train_config(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="'model.overrides"):
        train_config_from_dict({"model": {"overrides": {1: 2}}})


def test_yaml_cannot_build_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("output_dir: !!python/object/apply:os.system ['touch " + str(tmp_path / "marker") + "']\n")
    with pytest.raises(ConfigError):
        load_train_config(path)
    assert not (tmp_path / "marker").exists()


def test_crop_size_message_suggests_a_multiple_of_32():
    with pytest.raises(
        ConfigError, match=r"'data.crop_size' must be a multiple of 32 .*got 100; e.g. data.crop_size=96"
    ):
        load(None, "model.preset=pat_tiny", "data.crop_size=100")
    assert load(None, "model.preset=pat_tiny", "data.crop_size=96").data.crop_size == 96
