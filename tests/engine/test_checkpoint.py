"""Safe checkpoints: round trip, refusal of pickles and tampering (d), atomic writes and pruning (h)."""

import json
import os
import pickle
import shutil
import stat

import pytest
import torch
from engine_toys import ToyModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from patseg.engine import checkpoint as C
from patseg.engine.schedule import PolySchedule, build_param_groups


def _trained(dim=8, steps=2, seed=0):
    torch.manual_seed(seed)
    model = ToyModel(dim=dim)
    opt = torch.optim.AdamW(build_param_groups(model, 1e-4), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        out = model.training_losses(
            torch.rand(2, 3, 4, 4),
            torch.randint(0, 3, (2, 4, 4)),
            model.encode_vocabulary(["a", "b", "c"]),
            ignore_index=255,
        )
        out.total.backward()
        opt.step()
    return model, opt


def _state(iteration=2):
    return C.TrainState(
        iteration=iteration,
        sampler_position=8 * iteration,
        schedule=PolySchedule(1e-2, 10).state_dict(),
        scaler=None,
        rng=[C.capture_rng_state()],
        config={"note": "test"},
    )


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_round_trip_restores_model_optimizer_and_state(tmp_path):
    model, opt = _trained()
    folder = C.save_checkpoint(tmp_path, model, opt, _state())
    assert folder.name == "ckpt_0000002" and C.last_checkpoint(tmp_path) == folder
    assert (tmp_path / "last_checkpoint").read_text().strip() == "ckpt_0000002"
    assert "text.weight" not in load_file(folder / "model.safetensors")  # frozen weights left out by default
    assert "steps_seen" in load_file(folder / "model.safetensors")  # buffers kept

    fresh, fresh_opt = _trained(seed=1, steps=1)
    fresh_opt.param_groups[0]["lr"] = 999.0
    state = C.load_checkpoint(folder, fresh, fresh_opt)
    assert (state.iteration, state.sampler_position, state.config) == (2, 16, {"note": "test"})
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    saved, loaded = opt.state_dict(), fresh_opt.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]  # lr, betas (tuple again), names
    for pid, entries in saved["state"].items():
        for name, value in entries.items():
            assert torch.equal(loaded["state"][pid][name], value), (pid, name)


def test_include_frozen_and_bare_weight_files(tmp_path):
    model, opt = _trained()
    folder = C.save_checkpoint(tmp_path, model, opt, _state(), include_frozen=True)
    assert "text.weight" in load_file(folder / "model.safetensors")
    other = ToyModel()
    with torch.no_grad():
        other.text.weight.zero_()
    C.load_model_weights(folder, other)
    assert torch.equal(other.text.weight, model.text.weight)
    C.load_model_weights(folder / "model.safetensors", ToyModel())


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = json.loads(json.dumps(C.capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    C.restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])
    with pytest.raises(C.CheckpointError, match="RNG"):
        C.restore_rng_state({"python": [3, [1, 2], None]})


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this creates the marker file
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["model.safetensors", "optim.safetensors", "state.json"])
def test_pickle_named_like_our_files_is_refused(tmp_path, victim):
    model, opt = _trained()
    folder = C.save_checkpoint(tmp_path / "run", model, opt, _state())
    marker = tmp_path / "pwned"
    (folder / victim).write_bytes(pickle.dumps(_Evil(marker)))
    target, target_opt = _trained(seed=3, steps=1)
    before = _snapshot(target)
    with pytest.raises(C.CheckpointError, match=victim.replace(".", r"\.")):
        C.load_checkpoint(folder, target, target_opt)
    assert not marker.exists()
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing was loaded
    if victim != "optim.safetensors":  # weights-only loading reads model.safetensors and state.json
        with pytest.raises(C.CheckpointError):
            C.load_model_weights(folder, ToyModel())
        assert not marker.exists()
    pickle.loads((folder / victim).read_bytes())  # the payload is live: this is what we refused to do
    assert marker.exists()


def test_foreign_folder_and_bad_pointer_are_refused(tmp_path):
    foreign = tmp_path / "ckpt_0000005"
    foreign.mkdir()
    (foreign / "model.pth").write_bytes(pickle.dumps(_Evil(tmp_path / "pwned")))
    with pytest.raises(C.CheckpointError, match="state.json is missing"):
        C.load_checkpoint(foreign, *_trained())
    (tmp_path / "last_checkpoint").write_text("../../etc\n")
    with pytest.raises(C.CheckpointError, match="does not name a checkpoint"):
        C.last_checkpoint(tmp_path)
    (tmp_path / "last_checkpoint").write_text("ckpt_0000009\n")
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.last_checkpoint(tmp_path)
    assert C.last_checkpoint(tmp_path / "empty") is None
    assert not (tmp_path / "pwned").exists()


def _tamper_state(folder, edit):
    path = folder / "state.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(extra=1), "unexpected keys"),
        (lambda r: r.pop("rng"), "missing keys"),
        (lambda r: r.update(iteration="7"), "'iteration' has the wrong type"),
        (lambda r: r.update(iteration=True), "'iteration' has the wrong type"),
        (lambda r: r.update(format="detectron2"), "format"),
        (lambda r: r.update(version=99), "version"),
    ],
)
def test_tampered_state_is_refused(tmp_path, edit, message):
    folder = C.save_checkpoint(tmp_path, *_trained(), _state())
    _tamper_state(folder, edit)
    with pytest.raises(C.CheckpointError, match=message):
        C.load_checkpoint(folder, *_trained())


def test_bad_json_and_mismatched_tensors_are_refused(tmp_path):
    model, opt = _trained()
    folder = C.save_checkpoint(tmp_path, model, opt, _state())
    good = folder.with_name("good")
    shutil.copytree(folder, good)
    (folder / "state.json").write_text('{"format": "patseg-checkpoint", ')
    with pytest.raises(C.CheckpointError, match="not valid JSON"):
        C.load_checkpoint(folder, *_trained())

    with pytest.raises(C.CheckpointError, match="shape"):  # a model of another width
        C.load_checkpoint(good, *_trained(dim=4))
    weights = load_file(good / "model.safetensors")
    weights["surprise"] = torch.zeros(1)
    save_file(weights, good / "model.safetensors")
    with pytest.raises(C.CheckpointError, match="unexpected keys"):
        C.load_model_weights(good, ToyModel())


def test_tampered_optimizer_index_is_refused(tmp_path):
    model, opt = _trained()
    folder = C.save_checkpoint(tmp_path, model, opt, _state())
    path = folder / "optim.safetensors"
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        index = json.loads(f.metadata()[C.INDEX_KEY])
    renamed = json.loads(json.dumps(index))
    renamed["param_groups"][0]["param_names"][0] = "someone.else"
    save_file(tensors, path, metadata={C.INDEX_KEY: json.dumps(renamed)})
    with pytest.raises(C.CheckpointError, match="names differ"):
        C.load_checkpoint(folder, *_trained())
    first = next(iter(index["state"]))
    tensors[f"state.{first}.exp_avg"] = torch.zeros(99)
    save_file(tensors, path, metadata={C.INDEX_KEY: json.dumps(index)})
    with pytest.raises(C.CheckpointError, match="exp_avg' has shape"):
        C.load_checkpoint(folder, *_trained())
    save_file(tensors, path)
    with pytest.raises(C.CheckpointError, match="no valid optimizer index"):
        C.load_checkpoint(folder, *_trained())


def test_failed_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained()
    C.save_checkpoint(tmp_path, model, opt, _state(1))
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # model.safetensors is written, optim.safetensors fails
            raise OSError("disk full")
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(C, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(tmp_path, model, opt, _state(2))
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000001", "last_checkpoint"]
    assert C.last_checkpoint(tmp_path).name == "ckpt_0000001"


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model, opt = _trained()
    (tmp_path / ".tmp_ckpt_0000099").mkdir(parents=True)  # left behind by a killed writer
    for it in range(1, 6):
        C.save_checkpoint(tmp_path, model, opt, _state(it), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000004", "ckpt_0000005", "last_checkpoint"]
    assert C.last_checkpoint(tmp_path).name == "ckpt_0000005"
    C.save_checkpoint(tmp_path, model, opt, _state(5), keep_last=2)  # re-saving an iteration replaces it
    assert C.read_state(tmp_path / "ckpt_0000005")[0].iteration == 5


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_and_folders_follow_the_umask(tmp_path, umask):
    model, opt = _trained()
    old = os.umask(umask)
    try:
        C.save_checkpoint(tmp_path / "out", model, opt, _state(1))
        C.save_checkpoint(tmp_path / "out", model, opt, _state(2))  # the pointer file is replaced
    finally:
        os.umask(old)
    folder = tmp_path / "out" / "ckpt_0000002"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    for path in [*folder.iterdir(), tmp_path / "out" / C.POINTER_FILE]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []
