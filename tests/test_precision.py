"""Reduced-precision inference (``patseg.precision``, ``Segmenter(precision=...)``, ``--precision``): each mode stays
close to fp32, really computes in its own arithmetic, and a mode the device cannot run natively is refused.

The numeric comparisons enable every mode on whatever CPU runs the tests by faking the capability flags: without
native support the CPU emulates bfloat16 / float16 (slower, same rounding), so the numbers are the ones to check.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

import patseg.precision as precision
from patseg.build import build_model
from patseg.cli import build_parser, main
from patseg.errors import UsageError
from patseg.precision import PRECISIONS, autocast, check_precision, prepare_model
from patseg.predictor import Segmenter
from patseg.weights.files import save_weights

CPU = torch.device("cpu")
VOCABULARY = ["sky", "tree", "road", "car", "person", "building", "grass"]
ALL_NATIVE = {"avx512_bf16": True, "amx_bf16": True, "amx_fp16": True}
# Measured on random-weight san_tiny / pat_tiny, seeds 0-2, 96 x 128 images: every pixel's label agreed, and the
# largest score difference against fp32 was 0.018 (bf16), 0.0019 (fp16), 0.025 (int8).
MIN_AGREEMENT = 0.95
MAX_SCORE_DIFF = 0.05
# The shipped trained models on OVSS-mini's evaluation scenes: the lowest agreement measured was 0.971 (SAN-tiny
# int8). PAT's scores can move by up to 0.5 where a pixel's token flips to a neighbouring code, so only labels are
# compared there.
MIN_AGREEMENT_TRAINED = 0.95


@pytest.fixture
def all_native(monkeypatch):
    """Pretend the CPU computes bfloat16 and float16 natively."""
    monkeypatch.setattr(precision, "_cpu_capabilities", lambda: dict(ALL_NATIVE))


def _image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((96, 128, 3)) * 255).astype(np.uint8)


def _linear_count(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())


@pytest.mark.parametrize("mode", ["bf16", "fp16", "int8"])
@pytest.mark.parametrize("preset", ["san_tiny", "pat_tiny"])
def test_each_mode_stays_close_to_fp32_on_random_tiny_models(preset, mode, all_native):
    torch.manual_seed(1)
    model = build_model(preset)
    image = _image(1)
    reference = Segmenter(model, VOCABULARY, short_side=96)
    scores0 = reference.scores(image)
    segmenter = Segmenter(model, VOCABULARY, short_side=96, precision=mode)
    scores = segmenter.scores(image)
    assert scores.dtype == np.float32  # post-processing in float32 whatever the forward ran in
    agreement = float((segmenter.predict(image) == reference.predict(image)).mean())
    diff = float(np.abs(scores - scores0).max())
    assert agreement >= MIN_AGREEMENT
    assert diff <= MAX_SCORE_DIFF
    assert diff > 0  # the mode changed the arithmetic: it did not run in fp32


def test_shipped_trained_models_keep_their_labels_on_evaluation_scenes(all_native):
    from patseg.demo.shipped import load_shipped
    from patseg.mini.evaluate import VAL_SEED
    from patseg.mini.scenes import SyntheticSegmentation
    from patseg.mini.world import WorldConfig

    world = WorldConfig()
    names = list(world.concept_names)
    scenes = SyntheticSegmentation(world, "val", 3, 128, VAL_SEED)
    images = [np.ascontiguousarray(scenes[i]["image"].permute(1, 2, 0).numpy()) for i in range(len(scenes))]
    for name, model in load_shipped("cpu").items():
        reference = Segmenter(model, names, short_side=128, max_long_side=512)
        labels0 = [reference.predict(image) for image in images]
        assert len(np.unique(np.concatenate(labels0))) >= 3  # a real segmentation, not one class everywhere
        for mode in ("bf16", "fp16", "int8"):
            segmenter = Segmenter(model, names, short_side=128, max_long_side=512, precision=mode)
            for image, labels in zip(images, labels0):
                agreement = float((segmenter.predict(image) == labels).mean())
                assert agreement >= MIN_AGREEMENT_TRAINED, (name, mode, agreement)


def test_int8_quantizes_every_linear_layer_of_a_copy():
    torch.manual_seed(0)
    model = build_model("pat_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = _linear_count(model)
    assert linears > 0
    segmenter = Segmenter(model, VOCABULARY, short_side=64, precision="int8")
    quantized = segmenter.model
    assert quantized is not model and type(quantized) is type(model)
    assert _linear_count(quantized) == 0
    assert sum(type(m) is nnqd.Linear for m in quantized.modules()) == linears
    # The attributes other code reads are still there.
    assert quantized.clip is not None and quantized.side is not None and quantized.pixel_branch is not None
    # The caller's model is untouched.
    assert _linear_count(model) == linears
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert segmenter.predict(_image(0)).shape == (96, 128)


def test_prepare_model_returns_the_model_itself_for_the_other_modes():
    model = nn.Sequential(nn.Linear(4, 4))
    for mode in ("fp32", "bf16", "fp16"):
        assert prepare_model(model, mode) is model


@pytest.mark.parametrize(("mode", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_forward_runs_in_the_chosen_dtype(mode, dtype, all_native):
    torch.manual_seed(0)
    model = build_model("san_tiny")
    seen: list[torch.dtype] = []
    layer = next(m for m in model.side.modules() if type(m) is nn.Linear)
    layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    segmenter = Segmenter(model, VOCABULARY, short_side=64, precision=mode)
    seen.clear()  # the vocabulary is embedded in fp32 first; only the image forward counts
    segmenter.predict(_image(0))
    assert seen and set(seen) == {dtype}


def test_autocast_contexts():
    assert isinstance(autocast("bf16", CPU), torch.autocast)
    with autocast("bf16", CPU):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast("int8", CPU), autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_unknown_modes_list_the_choices():
    for call in (
        lambda: check_precision("fp8", CPU),
        lambda: autocast("fp8", CPU),
        lambda: prepare_model(nn.Linear(2, 2), "fp8"),
        lambda: Segmenter(build_model("san_tiny"), ["a"], precision="fp8"),
    ):
        with pytest.raises(UsageError, match="unknown precision 'fp8': choose one of fp32, bf16, fp16, int8"):
            call()


def test_int8_on_cuda_is_refused_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused on the mode alone, whatever the machine
    with pytest.raises(UsageError, match="int8 runs on the CPU only"):
        check_precision("int8", torch.device("cuda"))


def test_cuda_modes_need_cuda_and_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="CUDA is not available"):
        check_precision("fp16", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UsageError, match="this GPU does not support bfloat16"):
        check_precision("bf16", torch.device("cuda:0"))
    check_precision("fp16", torch.device("cuda:0"))


def test_a_cpu_without_native_support_refuses_bf16_and_fp16(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_capabilities", lambda: {"avx512_f": True, "avx512_fp16": True})
    with pytest.raises(UsageError, match="no native bfloat16"):
        check_precision("bf16", CPU)
    with pytest.raises(UsageError, match="no AMX-FP16"):
        check_precision("fp16", CPU)
    with pytest.raises(UsageError, match="precision bf16 on the CPU is refused"):
        Segmenter(build_model("san_tiny"), ["a"], device="cpu", precision="bf16")
    check_precision("fp32", CPU)
    check_precision("int8", CPU)


def test_other_devices_are_refused_except_in_fp32():
    with pytest.raises(UsageError, match="not on mps"):
        check_precision("fp16", torch.device("mps"))
    check_precision("fp32", torch.device("mps"))


def test_this_cpu_is_judged_by_its_own_flags():
    caps = torch.cpu.get_capabilities()
    assert precision.cpu_supports("bf16")[0] == bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    assert precision.cpu_supports("fp16")[0] == bool(caps.get("amx_fp16"))


# ---------------------------------------------------------------------------------------------------- command line
def test_the_option_parses_with_fp32_by_default():
    parser = build_parser()
    assert parser.parse_args(["eval", "--weights", "w"]).precision == "fp32"
    assert parser.parse_args(["eval", "--weights", "w", "--precision", "int8"]).precision == "int8"
    assert parser.parse_args(["demo", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--precision", "fp8"])
    action = next(a for a in parser._subparsers._group_actions[0].choices["eval"]._actions if a.dest == "precision")
    assert tuple(action.choices) == PRECISIONS


@pytest.fixture
def san_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "san.safetensors"
    save_weights(build_model("san_tiny"), path)
    return path


def test_eval_passes_the_precision_to_the_evaluation_and_records_it(san_weights, tmp_path, monkeypatch):
    calls = []

    def fake_evaluate(model, names, **kwargs):
        calls.append(kwargs["precision"])
        return {"x": {"mIoU": 1.0, "mIoU_gt_or_pred": 1.0, "num_images": 1}}

    monkeypatch.setattr("patseg.evaluation.loop.evaluate_datasets", fake_evaluate)
    argv = ["eval", "--weights", str(san_weights), "--datasets", "x", "--precision", "int8", "--out", f"{tmp_path}/r"]
    assert main(argv) == 0
    assert calls == ["int8"]
    assert json.loads((tmp_path / "r_seed0.json").read_text())["meta"]["precision"] == "int8"


def test_eval_refuses_an_unsupported_precision_before_any_work(san_weights, monkeypatch, capsys):
    monkeypatch.setattr(precision, "_cpu_capabilities", lambda: {})
    monkeypatch.setattr("patseg.evaluation.loop.evaluate_datasets", lambda *a, **k: pytest.fail("evaluated"))
    assert main(["eval", "--weights", str(san_weights), "--datasets", "x", "--precision", "bf16"]) == 2
    assert "precision bf16 on the CPU is refused" in capsys.readouterr().err
    argv = ["eval", "--weights", str(san_weights), "--precision", "int8", "--rfid", "--inception-weights", "i.pth"]
    assert main(argv) == 2
    assert "--rfid runs in fp32 only" in capsys.readouterr().err


def test_evaluate_dataset_builds_its_segmenter_in_that_precision(monkeypatch):
    from patseg.evaluation import loop

    built = []

    class Spy(Segmenter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    class Spec:
        name, class_names = "fake", ("sky", "tree")

    class Fake:
        spec, ignore_label = Spec(), 255

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 32, 48, dtype=torch.uint8), "label": torch.zeros(32, 48, dtype=torch.long)}

    monkeypatch.setattr(loop, "Segmenter", Spy)
    torch.manual_seed(0)
    metrics = loop.evaluate_dataset(build_model("san_tiny"), Fake(), short_side=32, progress=False, precision="int8")
    assert metrics["num_images"] == 1
    assert [s.precision for s in built] == ["int8"] and _linear_count(built[0].model) == 0


def _fake_serve(monkeypatch) -> dict:
    served: dict = {}

    class Blocks:
        def block_thread(self):
            pass

        def close(self):
            pass

    def fake_serve(backend, title, host, port):
        served["backend"] = backend
        return Blocks()

    monkeypatch.setattr("patseg.demo.app.serve", fake_serve)
    return served


def test_demo_passes_the_precision_to_its_segmenters(monkeypatch):
    served = _fake_serve(monkeypatch)
    assert main(["demo", "--preset", "san_tiny", "--short-side", "64", "--precision", "int8"]) == 0
    backend = served["backend"]
    segmenter = backend.segmenter("san_tiny", ("sky", "tree"))
    assert segmenter.precision == "int8" and _linear_count(segmenter.model) == 0


def test_demo_builtin_models_take_the_precision_and_refuse_what_the_cpu_lacks(monkeypatch, capsys):
    served = _fake_serve(monkeypatch)
    monkeypatch.setattr(precision, "_cpu_capabilities", lambda: {"avx512_bf16": True})
    assert main(["demo", "--precision", "bf16"]) == 0
    assert served["backend"].precision == "bf16" and served["backend"].world is not None
    served.clear()
    assert main(["demo", "--precision", "fp16"]) == 2
    assert "no AMX-FP16" in capsys.readouterr().err and not served
