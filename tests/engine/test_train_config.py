"""Training config: YAML + dotted overrides, with errors that name the key (e)."""
import pytest

from patseg.config import ConfigError
from patseg.engine.train_config import (TrainConfig, dump_train_config, load_train_config, model_config,
                                        parse_overrides, train_config_from_dict)


def test_defaults_follow_the_paper_recipe():
    cfg = load_train_config()
    assert cfg == TrainConfig()
    s = cfg.solver
    recipe = (s.lr, s.weight_decay, s.iters, s.batch_size, s.grad_clip, s.poly_power)
    assert recipe == (1e-4, 1e-4, 120000, 12, 0.01, 0.9)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("solver:\n  lr: 2e-4\n  amp: fp16\nmodel:\n  preset: san_vitb16\n  overrides:\n"
                    "    pat: {vmf: false}\neval:\n  datasets: [ade20k_150]\n")
    cfg = load_train_config(path, ["solver.iters=10", "log.period=5", "model.overrides.pat.kappa=20",
                                   "output_dir=/tmp/x y"])
    assert cfg.solver.lr == 2e-4 and isinstance(cfg.solver.lr, float)  # "2e-4" is a float, not a string
    assert (cfg.solver.amp, cfg.solver.iters, cfg.log.period) == ("fp16", 10, 5)
    assert cfg.model.overrides == {"pat.vmf": False, "pat.kappa": 20}
    assert cfg.eval.datasets == ("ade20k_150",) and cfg.output_dir == "/tmp/x y"
    mc = model_config(cfg)
    assert mc.pat is not None and mc.pat.vmf is False and mc.pat.kappa == 20.0
    again = tmp_path / "again.yaml"
    again.write_text(dump_train_config(cfg))
    assert load_train_config(again) == cfg


@pytest.mark.parametrize("override, key", [
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
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_train_config(overrides=[override])


def test_bad_yaml_and_syntax(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["solver.lr"])
    with pytest.raises(ConfigError, match="solver.lr"):
        parse_overrides(["solver.lr=[1"])
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
