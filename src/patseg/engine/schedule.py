"""Poly learning-rate schedule and AdamW parameter groups (the recipe in docs/design.md: SAN's optimizer, PAT's lr).

SAN trains with detectron2's WarmupPolyLR without warmup, ``lr = base_lr * (1 - it / max_iters) ** 0.9``, and
AdamW whose weight decay is 0 for norm layers (detectron2 WEIGHT_DECAY_NORM) and for positional / query
embeddings (WEIGHT_DECAY_EMBED). PAT adds codebooks, which get no decay for the same reason: decay would pull
code vectors toward the origin rather than regularise a weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Name fragments of embedding-like parameters kept out of weight decay: SAN's list (MendelXu/SAN train_net.py, with
# SOLVER.WEIGHT_DECAY_EMBED = 0) plus PAT's codebooks.
NO_DECAY_NAME_KEYS = (
    "positional",
    "pos_embed",
    "query_embed",
    "relative_position_bias_table",
    "codebook",
    "bg_embed",
    "embedding",
)

# Every normalisation layer with affine parameters: LayerNorm, GroupNorm, BatchNorm*/InstanceNorm*, RMSNorm.
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)


def poly_lr(base_lr: float, it: int, max_iters: int, power: float = 0.9) -> float:
    """Learning rate of iteration ``it`` (0-based): ``base_lr * (1 - it / max_iters) ** power``.

    Iteration 0 runs at ``base_lr``; ``it >= max_iters`` gives 0 (a run extended past its schedule stops learning
    rather than raising a negative base to a fractional power).
    """
    if max_iters <= 0:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {it}")
    return base_lr * max(0.0, 1.0 - it / max_iters) ** power


@dataclass
class PolySchedule:
    """The poly schedule as a checkpointable object; the checkpoint's values win on resume (detectron2 semantics)."""

    base_lr: float
    max_iters: int
    power: float = 0.9

    def lr_at(self, it: int) -> float:
        return poly_lr(self.base_lr, it, self.max_iters, self.power)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every group's lr for iteration ``it``; returns the lr."""
        lr = self.lr_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "max_iters": self.max_iters, "power": self.power}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"base_lr": float, "max_iters": int, "power": float}
        if set(state) != set(expected):
            raise ValueError(f"schedule state must have keys {sorted(expected)}, got {sorted(state)}")
        for key, tp in expected.items():
            if isinstance(state[key], bool) or not isinstance(state[key], (int, float)):
                raise ValueError(f"schedule state '{key}' must be a number, got {state[key]!r}")
            setattr(self, key, tp(state[key]))


def _is_no_decay(name: str, owner: nn.Module) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(owner, NORM_TYPES) and leaf in ("weight", "bias"):
        return True
    return any(key in name for key in NO_DECAY_NAME_KEYS)


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``decay`` (``weight_decay``) and ``no_decay`` (0).

    Frozen parameters (``requires_grad=False``) are left out. Parameters are passed as ``(name, tensor)`` pairs, so
    the optimizer's state dict carries ``param_names`` and a checkpoint can be matched by name on load. Groups come
    in a fixed order (decay, no_decay), empty ones are dropped, and the ``group`` key names each.
    """
    owners = {name: module for name, module in model.named_modules()}
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = owners[name.rsplit(".", 1)[0]] if "." in name else model
        (no_decay if _is_no_decay(name, owner) else decay).append((name, param))
    groups = [
        {"group": "decay", "params": decay, "weight_decay": weight_decay},
        {"group": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups
