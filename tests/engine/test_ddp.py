"""Two gloo processes on CPU train to the same parameters as one process with the same global batch (a)."""

import torch
import torch.multiprocessing as mp
from engine_toys import CLASS_NAMES, ToyDataset, ToyModel, collate, ddp_worker, free_port
from safetensors.torch import load_file

from patseg.engine.checkpoint import read_state
from patseg.engine.train_config import train_config_from_dict
from patseg.engine.trainer import train

# float32 sums over different splits of the batch differ in the last bits: after 4 AdamW steps the parameters agree
# to ~1e-8 (each moved ~2.6e-3). Without gradient averaging (each rank on its own half) they differ by 5e-5..4e-3.
ATOL, RTOL = 2e-6, 1e-5


def _cfg_dict(out, grad_accum):
    return {
        "output_dir": str(out),
        "data": {"workers": 0},
        "solver": {"iters": 4, "batch_size": 4, "grad_accum": grad_accum, "lr": 1e-3},
        "checkpoint": {"period": 4},
        "log": {"period": 2, "image_period": 100},
    }


def test_two_process_ddp_matches_single_process(tmp_path):
    cfg = _cfg_dict(tmp_path / "ddp", grad_accum=2)  # 2 ranks x 2 micro-batches x 1 image
    mp.spawn(ddp_worker, args=(2, free_port(), cfg), nprocs=2, join=True)

    torch.manual_seed(0)  # rank 0's init, which DDP broadcast
    init = ToyModel()
    single = train(
        train_config_from_dict(_cfg_dict(tmp_path / "single", grad_accum=1)),
        init,
        ToyDataset(),
        CLASS_NAMES,
        collate_fn=collate,
    )

    ddp_ckpt = tmp_path / "ddp" / "ckpt_0000004"
    a, b = load_file(ddp_ckpt / "model.safetensors"), load_file(single.checkpoint / "model.safetensors")
    torch.manual_seed(0)
    start = ToyModel().state_dict()
    for key in ("conv.weight", "conv.bias", "norm.weight", "proj.weight", "bg_embed"):
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=RTOL, msg=key)
        assert (a[key] - start[key]).abs().max() > 1e-3, key  # both actually trained
    state, _ = read_state(ddp_ckpt)
    assert state.sampler_position == 16 and len(state.rng) == 2  # one RNG record per rank
    assert state.rng[0]["torch"] != state.rng[1]["torch"]  # ranks are seeded seed + rank
