"""``patseg train [CONFIG.yaml] [--set KEY=VALUE ...]``: train SAN or PAT (one process, or torchrun for DDP)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from patseg.cli._common import CommandParser, add_set_option

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
--clip-weights and --lpips-weights set model.clip_weights and model.lpips_weights. File and folder paths
(model.{weights,init_from,clip_weights,lpips_weights}, data.root) are stored absolute in config.yaml and in the
checkpoints, so `patseg eval --weights CKPT` and `--config output_dir/config.yaml` work from any folder.

output_dir holds one run: a second `patseg train` with the same output_dir is refused unless it passes --resume.
--resume continues from output_dir/last_checkpoint; with no checkpoint there it warns and starts at iteration 0
(so one command line serves both the first launch and every restart of a preempted job). solver.seed (+ rank)
seeds Python, NumPy and torch before the model is built: two runs with the same config give the same losses."""


class _TrainParser(CommandParser):
    """``train``'s parser: a ``KEY=VALUE`` left over after the options is an assignment missing its ``--set``."""

    def parse_known_args(  # type: ignore[override]
        self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        stray = [a for a in extras if "=" in a and not a.startswith("-")]
        if stray:
            self.error(
                f"'{stray[0]}' looks like an assignment: assignments go after --set, "
                f"e.g. patseg train [CONFIG] [--resume] --set {' '.join(stray)}"
            )
        return parsed, extras


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SAN or PAT model (DDP with torchrun)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on a registered dataset with the paper's recipe (AdamW, poly schedule, gradient "
        "clipping, mixed precision on CUDA). Checkpoints are safetensors folders output_dir/ckpt_NNNNNNN (the "
        "newest named in output_dir/last_checkpoint); TensorBoard events and metrics.jsonl (one JSON line per "
        "logged step) in output_dir/logs; the resolved config in output_dir/config.yaml.",
    )
    p.__class__ = _TrainParser  # the subparsers' parser class is shared; only train's parser needs this check
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
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its last_checkpoint (without it, an output_dir that holds a run "
        "is refused); no checkpoint there: a warning, and training starts at iteration 0",
    )
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
    model = build_model(mcfg, clip_weights=clip_weights, init_from=cfg.model.init_from)  # seeded by the caller
    model.prepare_training(lpips_vgg_weights=cfg.model.lpips_weights)
    return model


_PATH_KEYS = (("model", "weights"), ("model", "init_from"), ("model", "clip_weights"), ("model", "lpips_weights"))


def absolute_paths(cfg: Any) -> None:
    """Store file paths absolute, so the config and checkpoints of the run resolve them from any folder."""
    for section, key in _PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value:
            setattr(getattr(cfg, section), key, os.path.abspath(os.path.expanduser(value)))
    cfg.data.root = os.path.abspath(os.path.expanduser(cfg.data.root))
    if cfg.model.preset.endswith(".json") and Path(cfg.model.preset).is_file():
        cfg.model.preset = os.path.abspath(cfg.model.preset)


def run(args: argparse.Namespace) -> int:
    from patseg.data.factory import build_dataset
    from patseg.data.transforms import TrainTransform
    from patseg.distributed import detect
    from patseg.engine.train_config import load_train_config
    from patseg.engine.trainer import check_output_dir, seed_all, train
    from patseg.errors import UsageError
    from patseg.evaluation.loop import evaluate_datasets

    if args.config is not None and "=" in args.config and not Path(args.config).is_file():
        raise UsageError(
            f"'{args.config}' is not a training YAML; assignments go after --set: "
            f"patseg train [CONFIG] --set {args.config}"
        )
    cfg = load_train_config(args.config, training_assignments(args))
    absolute_paths(cfg)
    check_output_dir(cfg.output_dir, args.resume)  # before any work: an earlier run is never overwritten
    seed_all(cfg.solver.seed + detect().rank)  # the model's initialisation is part of the run
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
