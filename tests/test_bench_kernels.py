"""The kernel bound (``patseg.bench.kernels``): which ops are recorded, their FLOPs against FlopCounterMode, and the
replay's bookkeeping (never absolute times)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patseg import bench
from patseg.build import build_model

CPU = torch.device("cpu")
aten = torch.ops.aten


def test_records_the_dense_ops_with_their_shapes_and_flops():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x, q, image = torch.randn(5, 16), torch.randn(1, 2, 10, 8), torch.randn(1, 3, 12, 12)

    def run():
        with torch.inference_mode():
            mlp(x)
            F.scaled_dot_product_attention(q, q, q)
            conv(image)

    ops = bench.record_dense_ops(run)
    assert [op.op for op in ops] == [
        aten.addmm.default,
        aten.addmm.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
        aten.convolution.default,
    ]
    assert [op.shapes() for op in ops] == [
        "32, 5x16, 16x32",
        "8, 5x32, 32x8",
        "1x2x10x8, 1x2x10x8, 1x2x10x8",
        "1x3x12x12, 4x3x3x3, 4",
    ]
    # ReLU, the bias adds and softmax are no FLOPs; SDPA is q k^T and a v; the convolution is 12x12 outputs x 4 x 27
    hand = [2 * 5 * 16 * 32, 2 * 5 * 32 * 8, 2 * 2 * (2 * 10 * 10 * 8), 2 * 12 * 12 * 4 * 3 * 3 * 3]
    assert [op.flops for op in ops] == hand
    assert sum(op.flops for op in ops) == bench.count_flops(run)


@pytest.mark.parametrize("preset", ["san_tiny", "pat_tiny"])
def test_recorded_flops_of_predict_are_the_counted_flops(preset):
    """Fused kernels that call other registered ops inside (native MHA's matmuls) are recorded once, as counted."""
    seg = bench.make_segmenter(build_model(preset).eval(), 20, (64, 64))
    image = bench.random_image(64, 64)
    ops = bench.record_dense_ops(lambda: seg.predict(image))
    assert aten._native_multi_head_attention.default in {op.op for op in ops}  # CLIP's fused attention
    assert sum(op.flops for op in ops) == bench.count_flops(lambda: seg.predict(image))


def test_kernel_bound_counts_calls_and_reports_what_it_cannot_replay():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    ops = bench.record_dense_ops(lambda: [a @ b for _ in range(3)])
    assert len(ops) == 3 and all(op.op == aten.mm.default for op in ops)
    assert ops[0].replay()().shape == (256, 256)
    bad = bench.DenseOp(
        aten.mm.default,
        (bench.TensorSpec((4, 5), (5, 1), torch.float32, CPU), bench.TensorSpec((6, 7), (7, 1), torch.float32, CPU)),
        {},
        2 * 4 * 5 * 7,
    )
    bound = bench.kernel_bound([*ops, bad], CPU, warmup=0, repeats=2, probe=bench.matmul_probe(CPU, size=64))
    assert bound.signatures == 1 and bound.calls == 3 and len(bound.rows) == 1
    row = bound.rows[0]
    assert row.op == "aten.mm" and row.shapes == "256x256, 256x256" and row.calls == 3
    assert row.ms == pytest.approx(3 * row.per_call_ms) and bound.median_ms == pytest.approx(row.ms)
    assert row.gflops == pytest.approx(3 * 2 * 256**3 / 1e9) and bound.gflops == pytest.approx(row.gflops)
    assert len(bound.runs_ms) == 2
    # rated against the probe like every other entry
    assert bound.gflops_per_s == pytest.approx(bound.gflops / (bound.median_ms / 1e3))
    assert bound.of_probe is not None and row.of_probe == pytest.approx(bound.of_probe)
    [skipped] = bound.skipped
    assert skipped["op"] == "aten.mm" and skipped["shapes"] == "4x5, 6x7" and skipped["calls"] == 1
    assert skipped["error"].startswith("RuntimeError")


def test_replay_keeps_strides_and_dtypes():
    a, b = torch.randn(64, 32), torch.randn(64, 8)
    half = a.to(torch.bfloat16)
    row = torch.randn(32).expand(48, 32)  # stride 0: overlapping memory
    ops = bench.record_dense_ops(
        lambda: (torch.mm(a.t(), b), torch.mm(half[:, :16], torch.ones(16, 8, dtype=torch.bfloat16)), a @ row.t())
    )
    assert [op.args[0].stride for op in ops] == [(1, 32), (32, 1), (32, 1)]
    assert ops[2].args[1].stride == (1, 0)
    assert ops[1].shapes() == "64x16, 16x8 bfloat16"
    for op in ops:
        out = op.replay()()
        assert out.dtype == op.args[0].dtype and not out.isnan().any()
        [again] = bench.record_dense_ops(op.replay())  # the replay runs on tensors of the recorded layout
        assert again.key() == op.key() and again.flops == op.flops
    bound = bench.kernel_bound(ops, CPU, warmup=0, repeats=1, top=2)
    assert not bound.skipped and bound.signatures == 3 and len(bound.rows) == 2
    assert bound.gflops_per_s is None  # no probe, no rate
