"""A toy model, dataset and launcher that implement the interface the trainer drives (tests only)."""

from __future__ import annotations

import os
import socket
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from patseg.models.outputs import StepOutput

NUM_CLASSES = 3
CLASS_NAMES = ["sky", "grass", "road"]


class ToyModel(nn.Module):
    """A two-conv "segmenter" scoring pixels against class embeddings from a frozen fake text tower."""

    def __init__(self, dim: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.norm = nn.GroupNorm(2, dim)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.bg_embed = nn.Parameter(torch.zeros(dim))
        self.text = nn.Embedding(16, dim)  # the "frozen CLIP": fixed init, as if loaded from a file
        with torch.no_grad():
            self.text.weight.copy_(torch.randn(16, dim, generator=torch.Generator().manual_seed(1234)))
        self.text.weight.requires_grad_(False)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))

    def encode_vocabulary(self, class_names: Sequence[str]) -> Tensor:
        ids = torch.tensor([sum(map(ord, n)) % 16 for n in class_names], device=self.text.weight.device)
        return F.normalize(self.text(ids), dim=-1)

    def training_losses(
        self, images: Tensor, labels: Tensor, class_embeddings: Tensor, *, ignore_index: int
    ) -> StepOutput:
        x = self.proj(self.drop(F.gelu(self.norm(self.conv(images)))))  # (B, D, H, W)
        logits = torch.einsum("bdhw,cd->bchw", x + self.bg_embed[:, None, None], class_embeddings) * 4.0
        self.steps_seen += 1
        losses = {
            "loss_ce": F.cross_entropy(logits, labels, ignore_index=ignore_index),
            "loss_reg": 0.01 * x.pow(2).mean(),
        }
        return StepOutput(
            losses=losses, stats={"mean_act": float(x.detach().mean())}, visuals={"pred": logits.argmax(1)}
        )


class ToyDataset(Dataset):
    """Deterministic 8x8 images whose label is the brightest channel; optional random flips and ignore pixels."""

    def __init__(self, size: int = 24, side: int = 8, augment: bool = False, ignore: bool = False) -> None:
        self.size, self.side, self.augment, self.ignore = size, side, augment, ignore

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.rand(3, self.side, self.side, generator=torch.Generator().manual_seed(index))
        label = image.argmax(0)
        if self.ignore:
            label[0, :] = 255
        if self.augment and torch.rand(()) < 0.5:  # the worker's (or main process's) torch RNG
            image, label = image.flip(-1), label.flip(-1)
        return {"image": image, "label": label}


def collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    return {"images": torch.stack([i["image"] for i in items]), "labels": torch.stack([i["label"] for i in items])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, cfg_dict: dict) -> None:
    """torch.multiprocessing.spawn target: what torchrun would set up, then one call of ``train``."""
    from patseg.engine.train_config import train_config_from_dict
    from patseg.engine.trainer import train

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different inits per rank: DDP must broadcast rank 0's
    train(train_config_from_dict(cfg_dict), ToyModel(), ToyDataset(), CLASS_NAMES, collate_fn=collate)
