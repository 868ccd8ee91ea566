"""``patseg train [CONFIG.yaml] [--set KEY=VALUE ...]``: train SAN or PAT (one process, or torchrun for DDP)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from patseg.cli._common import add_set_option

EPILOG = """examples:
  patseg train configs/pat_vitb16_clip.yaml --clip-weights ViT-B-16.bin --lpips-weights vgg16-397923af.pth
  patseg train configs/pat_vitb16_clip.yaml --set solver.iters=1000 data.root=datasets pat.vmf=false
  patseg train configs/pat_vitb16_clip.yaml --resume              # continue from output_dir/last_checkpoint
  torchrun --standalone --nproc_per_node=4 -m patseg train configs/pat_vitb16_clip.yaml
  torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
      -m patseg train configs/pat_vitb16_clip.yaml

--set takes two kinds of keys, told apart by their first part:
  training keys, as in the YAML: model.{preset,weights,init_from,clip_weights,lpips_weights},
    data.{dataset,root,crop_size,workers,allow_partial}, solver.{lr,weight_decay,iters,batch_size,grad_clip,amp,
    grad_accum,seed}, checkpoint.{period,keep_last,include_frozen}, log.{period,image_period},
    eval.{period,datasets,limit}, output_dir;
  model keys, as in every command's --set: clip.*, side.*, mask_decoder.*, pat.*, loss.* (e.g. pat.vmf=false,
    loss.vq_weight=1e-4); they are added to the YAML's model.overrides.
Values are YAML (1e-4, true, [ade20k_150, voc_20]). An unknown key or a wrong type is an error naming the key.
--clip-weights and --lpips-weights set model.clip_weights and model.lpips_weights."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SAN or PAT model (DDP with torchrun)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on a registered dataset with the paper's recipe (AdamW, poly schedule, gradient "
        "clipping, mixed precision on CUDA). Checkpoints are safetensors folders in output_dir; "
        "TensorBoard events in output_dir/logs; the resolved config in output_dir/config.yaml.",
    )
    p.add_argument("config", nargs="?", help="training YAML (see configs/); omitted = built-in defaults")
    add_set_option(p, "training keys (solver.iters=1000, data.root=datasets) or model keys (pat.vmf=false); see below")
    p.add_argument(
        "--clip-weights",
        metavar="FILE",
        help="local open_clip checkpoint of the preset's CLIP (required unless the CLIP is one of "
        "patseg's own tiny ones)",
    )
    p.add_argument(
        "--lpips-weights",
        metavar="FILE",
        help="torchvision's vgg16-397923af.pth for PAT's LPIPS loss (required when loss.perceptual_weight > 0)",
    )
    p.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    p.set_defaults(func=run)


def training_assignments(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` plus the file options, as dotted keys (so they are validated and written to config.yaml)."""
    from patseg.config import parse_assignments

    assignments = parse_assignments(args.set)
    for key, value in (("model.clip_weights", args.clip_weights), ("model.lpips_weights", args.lpips_weights)):
        if value is not None:
            assignments[key] = value
    return assignments


def build_for_training(cfg: Any) -> Any:
    """The model a training config describes, with its CLIP and LPIPS files checked before the first step."""
    from patseg.build import build_model
    from patseg.engine.train_config import model_config
    from patseg.errors import UsageError

    mcfg = model_config(cfg)
    clip_weights = cfg.model.clip_weights
    if clip_weights is None and not mcfg.clip.model_name.startswith("patseg-"):
        raise UsageError(
            f"training needs the pretrained CLIP weights of '{mcfg.clip.model_name}': pass "
            f"--clip-weights FILE (an open_clip checkpoint, e.g. the 'openai' weights) or set "
            f"model.clip_weights in the training YAML"
        )
    model = build_model(mcfg, clip_weights=clip_weights, init_from=cfg.model.init_from)
    model.prepare_training(lpips_vgg_weights=cfg.model.lpips_weights)
    return model


def run(args: argparse.Namespace) -> int:
    from patseg.data.factory import build_dataset
    from patseg.data.transforms import TrainTransform
    from patseg.engine.train_config import load_train_config
    from patseg.engine.trainer import train
    from patseg.errors import UsageError
    from patseg.evaluation.loop import evaluate_datasets

    if args.config is not None and "=" in args.config and not Path(args.config).is_file():
        raise UsageError(
            f"'{args.config}' is not a training YAML; assignments go after --set: "
            f"patseg train [CONFIG] --set {args.config}"
        )
    cfg = load_train_config(args.config, training_assignments(args))
    model = build_for_training(cfg)
    if cfg.model.clip_weights is None:
        # A CLIP without a file (patseg's tiny ones, random) cannot be restored from one: keep it in the checkpoints.
        cfg.checkpoint.include_frozen = True
    dataset = build_dataset(
        cfg.data.dataset,
        "train",
        root=cfg.data.root,
        transform=TrainTransform(crop_size=cfg.data.crop_size, ignore_label=cfg.data.ignore_index),
        allow_partial=cfg.data.allow_partial,
    )

    def evaluate(m: Any, iteration: int) -> dict:
        return evaluate_datasets(
            m, cfg.eval.datasets, root=cfg.data.root, limit=cfg.eval.limit, allow_partial=cfg.data.allow_partial
        )

    result = train(
        cfg,
        model,
        dataset,
        dataset.spec.class_names,
        evaluate=evaluate if cfg.eval.datasets else None,
        resume=args.resume,
    )
    print(f"finished at iteration {result.iteration}; last checkpoint: {result.checkpoint}")
    return 0
