"""PAT's reconstruction loss: L_rec = 0.1 * L1 + 1.0 * L2 + 0.1 * LPIPS-VGG on images in [0, 1].

The paper weights L1, L2 and a perceptual loss "as in ViT-VQGAN" (Yu et al. 2021: 0.1 logit-Laplace ~ L1, 1.0 L2,
0.1 perceptual). The perceptual term is read as LPIPS with a VGG16 trunk, as VQGAN-family code does, computed on a
``lpips_size`` x ``lpips_size`` resize of both images because at 640² it costs as much as the rest of a training
step.

LPIPS comes from the ``lpips`` package (0.1.4), whose wheel ships the calibrated linear heads but not the VGG16
trunk: ``lpips.LPIPS(pretrained=True)`` would download torchvision's ``vgg16-397923af.pth``. patseg never downloads,
so the network is built with a random trunk and the trunk is filled from a local copy of that file. The file is a
training input, not part of the architecture: it reaches the loss through ``model.prepare_training``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patseg.errors import MissingFileError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 weights, the trunk LPIPS was calibrated on
VGG16_SETTING = "--lpips-weights (training YAML: model.lpips_weights)"  # where a training run names that file


def load_vgg16_trunk(trunk: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy torchvision VGG16 ``features.*`` weights into an lpips VGG trunk, in place.

    lpips splits ``vgg16().features`` into ``slice1..slice5`` but keeps each layer's index as its name, so trunk key
    ``slice2.5.weight`` is torchvision key ``features.5.weight``. The classifier weights are not needed and ignored.
    """
    mapped = {}
    for key in trunk.state_dict():
        source = "features." + key.split(".", 1)[1]
        if source not in state:
            raise KeyError(f"not a torchvision vgg16 state dict: key '{source}' is missing")
        mapped[key] = state[source]
    trunk.load_state_dict(mapped, strict=True)


def build_lpips_vgg(vgg_weights: str | None, *, random_trunk: bool = False) -> lpips.LPIPS:
    """LPIPS-VGG (v0.1, shipped linear heads), frozen and in eval mode.

    Args:
        vgg_weights: path of torchvision's ``vgg16-397923af.pth`` (a plain state dict).
        random_trunk: keep lpips' random trunk instead (tests and timing only; the metric is then meaningless).
    Raises:
        MissingFileError: ``vgg_weights`` is None or not a file (and ``random_trunk`` is False).
    """
    if random_trunk and vgg_weights is not None:
        raise ValueError("give either vgg_weights or random_trunk=True, not both")
    path = None if vgg_weights is None else Path(vgg_weights).expanduser()
    if not random_trunk and (path is None or not path.is_file()):
        given = "no file was given" if path is None else f"'{path}' is not a file"
        raise MissingFileError(
            f"LPIPS-VGG needs torchvision's ImageNet VGG16 weights '{VGG16_FILE}' as a local file, but {given}: "
            f"give it with {VGG16_SETTING} (in Python: model.prepare_training(lpips_vgg_weights=...)), "
            "or set loss.perceptual_weight=0"
        )
    with warnings.catch_warnings():  # lpips still calls torchvision's deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    if path is not None:
        load_vgg16_trunk(net.net, torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    net.requires_grad_(False)
    return net


class ReconstructionLoss(nn.Module):
    """Weighted L1 + L2 + LPIPS-VGG between a reconstruction and its image.

    The LPIPS network is frozen and held outside the module tree (a plain attribute), so it is neither in
    ``parameters()`` nor in ``state_dict()``; ``.to()`` / ``.cuda()`` / ``.half()`` still move it (see ``_apply``),
    and it stays in eval mode (no dropout) whatever ``train()`` says. It is built by :meth:`build`, which takes the
    VGG16 file, or lazily on the first perceptual term (then only ``random_trunk`` can do without the file).

    Args:
        l1_weight, l2_weight, perceptual_weight: term weights (ViT-VQGAN: 0.1, 1.0, 0.1).
        lpips_size: both images are resized (bilinear, antialiased when shrinking) to this square side for LPIPS.
        random_trunk: LPIPS with lpips' random VGG trunk and no file (tests and timing only, see
            :func:`build_lpips_vgg`).
    """

    def __init__(
        self,
        *,
        l1_weight: float = 0.1,
        l2_weight: float = 1.0,
        perceptual_weight: float = 0.1,
        lpips_size: int = 256,
        random_trunk: bool = False,
    ):
        super().__init__()
        self.l1_weight, self.l2_weight, self.perceptual_weight = l1_weight, l2_weight, perceptual_weight
        self.lpips_size = lpips_size
        self.random_trunk = random_trunk
        self._perceptual: list[lpips.LPIPS] = []

    def build(self, vgg_weights: str | None = None) -> None:
        """Build the LPIPS network now from ``vgg_weights`` (torchvision's ``vgg16-397923af.pth``).

        Nothing happens when ``perceptual_weight`` is 0 or the network exists. Raises MissingFileError naming the
        expected file when the perceptual term is on, ``random_trunk`` is False and the file is missing; training
        calls this (through ``model.prepare_training``) before the first step, so that it refuses to start.
        """
        if self.perceptual_weight > 0 and not self._perceptual:
            self._perceptual.append(build_lpips_vgg(vgg_weights, random_trunk=self.random_trunk))

    @property
    def lpips_net(self) -> lpips.LPIPS | None:
        """The frozen LPIPS network, or None when ``perceptual_weight`` is 0."""
        return self._perceptual[0] if self._perceptual else None

    def _apply(self, fn, recurse: bool = True):
        # Device and dtype moves reach the LPIPS network although it is not a registered submodule.
        super()._apply(fn, recurse)
        for net in self._perceptual:
            net._apply(fn)
        return self

    def perceptual(self, recon: Tensor, target: Tensor) -> Tensor:
        """Unweighted LPIPS distance, mean over the batch. recon, target: (B, 3, H, W) in [0, 1] -> scalar."""
        self.build()
        net = self.lpips_net
        if net is None:
            raise RuntimeError("perceptual_weight is 0: this ReconstructionLoss has no LPIPS network")
        net.to(recon.device)  # built lazily, possibly after the model moved
        side = self.lpips_size
        if recon.shape[-2:] != (side, side):
            shrink = min(recon.shape[-2:]) > side
            recon = F.interpolate(recon, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink)
            target = F.interpolate(target, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink)
        return net(recon, target, normalize=True).mean()  # normalize=True: inputs in [0, 1] -> [-1, 1]

    def forward(self, recon: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Weighted terms ``loss_l1``, ``loss_l2``, ``loss_lpips`` (each a scalar; lpips is 0 when its weight is 0).

        Args:
            recon: (B, 3, H, W) reconstruction in [0, 1].
            target: (B, 3, H, W) image in [0, 1], same size.
        """
        if recon.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
        diff = recon - target
        terms = {
            "loss_l1": self.l1_weight * diff.abs().mean(),
            "loss_l2": self.l2_weight * diff.square().mean(),
        }
        if self.perceptual_weight > 0:
            terms["loss_lpips"] = self.perceptual_weight * self.perceptual(recon, target)
        else:
            terms["loss_lpips"] = diff.new_zeros(())
        return terms
