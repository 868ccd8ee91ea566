"""``patseg.bench`` on the tiny presets: FLOP accounting, stage replay, and relative costs (never absolute times)."""

from __future__ import annotations

import pytest
import torch

from patseg import bench
from patseg.build import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pat_tiny():
    return build_model("pat_tiny").eval()


@pytest.fixture()
def one_thread():
    # Relative timings on a shared machine: one thread, so no op waits on a descheduled worker thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vit_flops(width: int, mlp: int, depth: int, tokens: int) -> int:
    """2 x multiply-adds of ``depth`` pre-norm ViT blocks on ``tokens`` tokens, written out loop by loop."""
    macs = 0
    for _ in range(depth):
        macs += tokens * width * 3 * width  # q, k, v projections
        macs += tokens * tokens * width  # q k^T over all heads
        macs += tokens * tokens * width  # attention @ v
        macs += tokens * width * width  # output projection
        macs += tokens * width * mlp * 2  # MLP up and down
    return 2 * macs


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_flop_counter_sees_clip_attention(pat_tiny, mode):
    """The fused attention kernels (inference: native MHA; training: CPU flash SDPA) are counted exactly."""
    clip = pat_tiny.clip
    x = torch.randn(1, 3, 64, 64)
    block = clip.visual.transformer.resblocks[0]
    grid, patch = 64 // clip.patch_size, clip.patch_size
    tokens = 1 + grid * grid
    expected = vit_flops(clip.width, block.mlp.c_fc.out_features, clip.depth, tokens)
    expected += 2 * grid * grid * clip.width * 3 * patch * patch  # patch embedding conv
    expected += 2 * clip.width * clip.out_dim  # final projection of the class token

    def run():
        if mode == "inference":
            with torch.inference_mode():
                clip.encode_image(x)
        else:
            clip.encode_image(x.requires_grad_(False)).sum()

    assert bench.count_flops(run) == expected


def test_stage_breakdown_accounts_for_every_flop(pat_tiny):
    seg = bench.make_segmenter(pat_tiny, 30, (128, 128))
    image = bench.random_image(128, 128)
    result = bench.stage_breakdown(seg, image, CPU, bench.matmul_probe(CPU, size=128), warmup=0, repeats=1)
    assert set(result.stages) == {
        "preprocess",
        "clip_taps",
        "side_vit",
        "mask_decoder",
        "recognition",
        "classify",
        "post_processing",
        "pyramid_pixel",
        "pyramid_semantic",
        "latent_vq",
        "shared_decoder",
    }
    assert result.nesting == {"pyramid_semantic": "side_vit"}
    parts = sum(m.gflops for m in result.stages.values())
    assert parts == pytest.approx(result.end_to_end.gflops, rel=1e-6)  # nothing runs outside the named parts
    assert result.stages["side_vit"].gflops > 0 and result.stages["pyramid_semantic"].gflops > 0
    # every part is rated against the probe timed in the same rounds: rate = GFLOPs / s, fraction = rate / probe's
    probe_rate = result.probe.gflops / (result.probe.median_ms / 1e3)
    assert result.probe.gflops == pytest.approx(2 * 128**3 / 1e9) and result.probe.of_probe == pytest.approx(1.0)
    for m in (*result.stages.values(), result.end_to_end, result.scores):
        assert m.gflops_per_s == pytest.approx(m.gflops / (m.median_ms / 1e3))
        assert m.of_probe == pytest.approx(m.gflops_per_s / probe_rate)
    assert result.scores.gflops > result.end_to_end.gflops  # scores maps every class; predict bounds the argmax
    # predict's dense ops replayed alone: every FLOP of predict, every signature replayed, the top 8 kept
    bound = result.kernel_bound
    assert not bound.skipped and bound.gflops == pytest.approx(result.end_to_end.gflops, rel=1e-6)
    assert len(bound.rows) == min(8, bound.signatures) and bound.calls >= bound.signatures > 8
    assert bound.gflops_per_s == pytest.approx(bound.gflops / (bound.median_ms / 1e3)) and bound.of_probe is not None
    # each time in units of its own rounds' probe: with equal FLOPs, the ratio of the two fractions of the probe
    assert result.over_kernel_bound == pytest.approx(bound.of_probe / result.end_to_end.of_probe, rel=1e-6)
    assert bench.as_dict(result)["kernel_bound"]["rows"][0]["calls"] == bound.rows[0].calls  # JSON-ready


def test_probe_scaled_ratio_cancels_a_change_of_machine_speed():
    from patseg.bench.measure import Measurement
    from patseg.bench.stages import probe_scaled_ratio

    probe_fast, probe_slow = Measurement(10.0, [10.0], gflops=1.0), Measurement(20.0, [20.0], gflops=1.0)
    a = bench.rate_against(Measurement(300.0, [300.0], gflops=2.0), probe_slow)  # timed while the machine was slow
    b = bench.rate_against(Measurement(100.0, [100.0], gflops=2.0), probe_fast)
    assert probe_scaled_ratio(a, b) == pytest.approx(1.5)  # 300 / 100 raw; the machine was 2x slower for a
    assert probe_scaled_ratio(Measurement(3.0, [3.0]), Measurement(2.0, [2.0])) == pytest.approx(1.5)  # no rates


def test_probe_runs_in_the_precision_measured():
    fn, flops = bench.matmul_probe(CPU, "fp32", size=64)
    assert flops == 2 * 64**3 and fn().dtype == torch.float32 and fn().shape == (64, 64)
    fn, _ = bench.matmul_probe(CPU, "bf16", size=64)
    assert fn().dtype == torch.bfloat16
    fn, _ = bench.matmul_probe(CPU, "int8", size=64)
    assert fn().dtype == torch.float32  # a dynamically quantized Linear: int8 weights, float output


def test_rate_against_the_probe_is_flops_over_time():
    probe = bench.Measurement(median_ms=10.0, runs_ms=[10.0], gflops=2.0)  # 200 GFLOP/s
    part = bench.rate_against(bench.Measurement(median_ms=20.0, runs_ms=[20.0], gflops=3.0), probe)
    assert part.gflops_per_s == pytest.approx(150.0) and part.of_probe == pytest.approx(0.75)
    unrated = bench.rate_against(bench.Measurement(median_ms=20.0, runs_ms=[20.0]), probe)
    assert unrated.gflops_per_s is None and unrated.of_probe is None


def test_targets_read_the_probe_fraction_pat_over_san_and_area_growth():
    plan = bench.BenchPlan(san="s", pat="p", size=(10, 10), sizes=((10, 10), (20, 20)))

    def m(ms: float, gflops: float, of_probe: float = 0.5) -> dict:
        return {"median_ms": ms, "gflops": gflops, "gflops_per_s": gflops / ms * 1e3, "of_probe": of_probe}

    models = {
        "s": {
            "end_to_end": m(100, 10, 0.9),
            "scores": m(120, 12, 0.8),
            "glue_ratio": 1.0,
            "kernel_bound": m(80, 10, 1.125),  # the dense ops alone: 80 ms
            "over_kernel_bound": 1.25,  # 100 ms / 80 ms
        },
        "p": {"end_to_end": m(200, 20), "scores": m(220, 22), "glue_ratio": 1.1},
    }
    # PAT's own part (PAT - SAN): 50 ms at 10x10, 250 ms at 20x20 (4x the pixels): 1.25 per pixel
    sizes = [
        {"preset": "s", "size": [10, 10], "predict": m(100, 10)},
        {"preset": "p", "size": [10, 10], "predict": m(150, 20)},
        {"preset": "s", "size": [20, 20], "predict": m(400, 40)},
        {"preset": "p", "size": [20, 20], "predict": m(650, 80)},
    ]
    targets = {t["target"]: t for t in bench.check_targets({"models": models, "sizes": sizes}, plan)}
    assert targets["s predict / matmul probe"]["passed"] and targets["s predict / matmul probe"]["kind"] == "at least"
    assert not targets["s scores / matmul probe"]["passed"]
    bound, gap = targets["s predict kernel bound / matmul probe"], targets["s predict / kernel bound"]
    assert bound["value"] == pytest.approx(1.125) and bound["kind"] == "at least" and bound["limit"] == 0.85
    assert bound["passed"] and "125 GFLOP/s" in bound["note"]
    assert gap["value"] == pytest.approx(1.25) and gap["kind"] == "at most" and gap["limit"] == 1.15
    assert not gap["passed"]
    names = list(targets)  # the kernel bound's entries stand next to predict's probe target
    assert names.index("s predict kernel bound / matmul probe") == names.index("s predict / matmul probe") + 1
    assert "p predict / kernel bound" not in targets  # SAN's only
    assert targets["p / s predict time"]["value"] == pytest.approx(1.5) and targets["p / s predict time"]["passed"]
    growth = targets["p - s time per pixel 20x20 / 10x10"]
    assert growth["value"] == pytest.approx(1.25) and not growth["passed"]


def test_recorder_restores_the_methods(pat_tiny):
    seg = bench.make_segmenter(pat_tiny, 5, (64, 64))
    recorder = bench.StageRecorder(bench.stage_targets(seg))
    with recorder:
        seg.predict(bench.random_image(64, 64))
    assert "extract" not in vars(pat_tiny.clip) and "forward" not in vars(pat_tiny.side)
    assert "semantic" not in vars(pat_tiny.pixel_branch.stages[0])
    assert [c.stage for c in recorder.calls].count("pyramid_semantic") == 3


def test_class_scoring_cost_is_flat_in_the_vocabulary(pat_tiny, one_thread):
    """Cached embeddings and batched scoring: 847 classes cost the model forward (almost) what 20 cost."""
    x = torch.rand(1, 3, 128, 128)
    forwards = {}
    for c in (20, 847):
        emb = torch.nn.functional.normalize(torch.randn(c, pat_tiny.clip.out_dim), dim=-1)

        def run(emb=emb):
            with torch.inference_mode():
                pat_tiny(x, emb)

        forwards[c] = run
    flops = {c: bench.count_flops(fn) for c, fn in forwards.items()}
    assert flops[847] / flops[20] < 1.10
    times = bench.measure_all(forwards, CPU, warmup=1, repeats=7, memory=False, flops=False)
    assert times[847].median_ms / times[20].median_ms < 1.5


def test_post_processing_memory_is_chunked(pat_tiny):
    """A 256x1024 label map over 847 classes never holds the (C, H, W) score volume."""
    if not bench.cpu_peak_supported():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    hw, classes = (256, 1024), 847
    seg = bench.make_segmenter(pat_tiny, classes, hw)
    x, valid = seg._prepare(bench.random_image(*hw))
    with torch.inference_mode():
        pred = pat_tiny(x, seg.class_embeddings).main
    peak = bench.peak_memory_mb(lambda: seg.postprocess(pred, tuple(x.shape[-2:]), valid, hw), CPU)
    volume_mb = classes * hw[0] * hw[1] * 4 / 2**20
    assert peak < 0.3 * volume_mb


def test_bounded_post_processing_does_a_fraction_of_the_dense_arithmetic(pat_tiny):
    """Region-like masks, 100 queries, 847 classes at 160x160: the same labels as scoring every class, with under a
    tenth of its FLOPs (the bound matmuls and boundary blocks only); with 20 classes it does not cost more."""
    from patseg.bench.postprocess import dense_postprocess, region_prediction

    size = (160, 160)
    seg = bench.make_segmenter(pat_tiny, 20, size)
    flops = {}
    for classes in (20, 847):
        pred = region_prediction(100, classes, (20, 20))
        bounded, dense = seg.postprocess(pred, size, size, size), dense_postprocess(seg, pred, size, size, size)
        assert torch.equal(bounded, dense)
        assert len(bounded.unique()) > 3  # several regions survive: the case is not trivial
        flops[classes] = (
            bench.count_flops(lambda: seg.postprocess(pred, size, size, size)),
            bench.count_flops(lambda: dense_postprocess(seg, pred, size, size, size)),
        )
    assert flops[847][0] < 0.1 * flops[847][1]
    assert flops[847][0] < 2.0 * flops[20][1]


def test_peak_memory_sees_a_large_allocation():
    def allocate():
        t = torch.ones(64, 2**20)  # 256 MiB, touched
        return float(t[-1, -1])

    if not bench.cpu_peak_supported():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert 200 < bench.peak_memory_mb(allocate, CPU) < 400


def test_markdown_report_has_every_section():
    from patseg.cli.bench import format_markdown

    m = {"median_ms": 10.0, "runs_ms": [10.0], "peak_mb": 1.0, "gflops": 2.0, "gflops_per_s": 200.0, "of_probe": 0.5}
    case = {"preset": "pat_tiny", "size": [64, 64], "classes": 20, "predict": m, "forward": m}
    kernel_row = {"op": "aten.mm", "shapes": "1700x240, 240x720", "calls": 24, "per_call_ms": 0.25, "ms": 6.0}
    kernel_row |= {"gflops": 1.5, "gflops_per_s": 250.0, "of_probe": 0.625}
    bound = {**m, "median_ms": 8.0, "gflops_per_s": 250.0, "of_probe": 0.625, "signatures": 7, "calls": 40}
    bound |= {"rows": [kernel_row], "skipped": [{"op": "aten.bad", "shapes": "4x5", "calls": 1, "error": "Boom: no"}]}
    model = {"end_to_end": m, "scores": m, "stages": {"side_vit": m}, "stage_sum_ms": 10.0, "glue_ratio": 1.0}
    model |= {"kernel_bound": bound, "over_kernel_bound": 1.25}
    report = {
        "environment": bench.environment(CPU),
        "plan": {"size": [64, 64], "classes": 20, "probe_size": 2048},
        "probe": {**m, "of_probe": 1.0},
        "clip_image_encoder": m,
        "models": {"pat_tiny": model},
        "sizes": [case],
        "memory_case": case,
        "vocabulary": [case],
        "postprocess_regions": [
            {
                "preset": "pat_tiny",
                "size": [64, 64],
                "classes": 20,
                "bounded_ms": 1.0,
                "dense_ms": 2.0,
                "labels_equal": True,
            }
        ],
        "train_step": [{"preset": "pat_tiny", "size": 64, **m}],
        "compile": [
            {
                "preset": "pat_tiny",
                "size": [64, 64],
                "classes": 20,
                "eager_ms": 2.0,
                "compiled_ms": 1.0,
                "compile_s": 30.0,
                "labels_agree": 1.0,
            }
        ],
        "targets": [{"target": "t", "value": 1.2, "limit": 1.1, "kind": "at most", "passed": False, "note": ""}],
    }
    text = format_markdown(report)
    for heading in (
        "Matrix-product probe",
        "200 (50%)",
        "Per-part breakdown",
        "Image sizes",
        "Vocabulary sizes",
        "region-like",
        "Training step",
        "torch.compile",
        "Targets",
    ):
        assert heading in text
    assert "**no**" in text
    assert "| kernel bound (dense ops alone) | 8 | 2 | 250 (62%) |" in text
    assert "| predict / kernel bound | 1.25 |" in text
    assert "pat_tiny kernel bound: 8 ms over 7 op signatures (40 calls)" in text
    assert "| aten.mm | 1700x240, 240x720 | 24 | 6.0 | 250 (62%) |" in text
    assert "not replayed: aten.bad (4x5, 1 calls): Boom: no" in text
