"""How the golden generator reaches the library: the only place to adapt when an API is renamed."""

from __future__ import annotations

import torch

from patseg.build import build_model


def build(name: str, overrides: dict) -> torch.nn.Module:
    return build_model(name, overrides=overrides)


def class_embeddings(model: torch.nn.Module, names: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_vocabulary(names).clone()


def training_losses(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor
) -> dict[str, torch.Tensor]:
    return dict(model.training_losses(images, labels, emb).losses)
