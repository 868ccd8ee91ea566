"""``patseg train CONFIG.yaml [key=value ...]``: train SAN or PAT (one process, or torchrun for DDP)."""
from __future__ import annotations

import argparse

EPILOG = """examples:
  patseg train configs/pat_vitb16_clip.yaml model.clip_weights=ViT-B-16.bin data.root=datasets
  patseg train configs/pat_vitb16_clip.yaml solver.iters=1000 model.overrides.pat.vmf=false
  patseg train configs/pat_vitb16_clip.yaml --resume              # continue from output_dir/last_checkpoint
  torchrun --standalone --nproc_per_node=4 -m patseg train configs/pat_vitb16_clip.yaml
  torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
      -m patseg train configs/pat_vitb16_clip.yaml

Keys: model.{preset,overrides,weights,clip_weights}, data.{dataset,root,crop_size,workers},
solver.{lr,weight_decay,iters,batch_size,grad_clip,amp,grad_accum,seed}, checkpoint.{period,keep_last},
log.{period,image_period}, eval.{period,datasets,limit}, output_dir. An unknown key or a wrong type is an error."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a SAN or PAT model (DDP with torchrun)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on a registered dataset with the paper's recipe (AdamW, poly schedule, gradient "
                    "clipping, mixed precision on CUDA). Checkpoints are safetensors folders in output_dir; "
                    "TensorBoard events in output_dir/tb.")
    p.add_argument("config", nargs="?", help="training YAML (see configs/); omitted = built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. solver.iters=1000")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/last_checkpoint")
    p.set_defaults(func=run)


def build_for_training(cfg):
    """The model a training config describes, with its CLIP weights checked."""
    from patseg.build import build_model
    from patseg.cli import CLIError
    from patseg.engine.train_config import model_config

    mcfg = model_config(cfg)
    clip_weights = cfg.model.clip_weights or mcfg.clip.weights
    if clip_weights is None and not mcfg.clip.model_name.startswith("patseg-"):
        raise CLIError(f"training needs the pretrained CLIP weights of '{mcfg.clip.model_name}': set "
                       f"model.clip_weights=/path/to/file (an open_clip checkpoint, e.g. the 'openai' weights)")
    try:
        model = build_model(mcfg, clip_weights=clip_weights)
        model.prepare_training()  # e.g. PAT's LPIPS VGG16 file: refuse to start without it
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    return model


def run(args: argparse.Namespace) -> int:
    from patseg.cli import CLIError
    from patseg.data.datasets import SemSegDataset
    from patseg.data.transforms import TrainTransform
    from patseg.evaluation.loop import evaluate_datasets
    from patseg.engine.train_config import load_train_config
    from patseg.engine.trainer import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides  # only overrides were given
    cfg = load_train_config(config, overrides)
    model = build_for_training(cfg)
    if model.config.clip.weights is None and not cfg.checkpoint.include_frozen:
        # A randomly initialised CLIP (tiny presets) cannot be restored from a file: keep it in the checkpoints.
        cfg.checkpoint.include_frozen = True
    try:
        dataset = SemSegDataset(cfg.data.dataset, split="train", root=cfg.data.root,
                                transform=TrainTransform(crop_size=cfg.data.crop_size,
                                                         ignore_label=cfg.data.ignore_index),
                                allow_partial=cfg.data.allow_partial)
    except (KeyError, FileNotFoundError) as exc:
        raise CLIError(str(exc).strip("'\"")) from None

    def evaluate(m, iteration):
        return evaluate_datasets(m, cfg.eval.datasets, root=cfg.data.root, limit=cfg.eval.limit,
                                 allow_partial=cfg.data.allow_partial)

    result = train(cfg, model, dataset, dataset.spec.class_names,
                   evaluate=evaluate if cfg.eval.datasets else None, resume=args.resume)
    print(f"finished at iteration {result.iteration}; last checkpoint: {result.checkpoint}")
    return 0
