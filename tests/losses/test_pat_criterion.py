"""PatCriterion: every PAT loss term with its weight against a direct computation, the Table II spatial switch,
LPIPS preparation, and the losses layer's independence from the models."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import patseg
from patseg.errors import MissingFileError
from patseg.losses import spatial
from patseg.losses.matcher import targets_from_semseg
from patseg.losses.pat_criterion import PatCriterion
from patseg.losses.reconstruction import VGG16_FILE, ReconstructionLoss
from patseg.losses.set_criterion import SetCriterion
from patseg.losses.spatial import SPATIAL_INNER_WEIGHTS, crf_loss, imagenet_normalize, tv_loss


def labels() -> torch.Tensor:
    out = torch.zeros(2, 16, 16, dtype=torch.int64)
    out[0, :, 8:] = 2
    out[1, :8] = 1
    out[1, 12:] = 255
    return out


def criterion(**kwargs) -> PatCriterion:
    weights = {
        "vq_weight": 0.3,
        "spatial_weight": 0.7,
        "crf_weight": 2.0,
        "tv_weight": 5.0,
        "crf_points": 16,
        "rec_weight": 1.5,
    }
    weights.update(kwargs)
    reconstruction = ReconstructionLoss(l1_weight=0.2, l2_weight=3.0, perceptual_weight=0.0)
    return PatCriterion(set_loss=SetCriterion(num_points=16), reconstruction=reconstruction, **weights)


def step_inputs() -> dict:
    def pred() -> SimpleNamespace:
        return SimpleNamespace(logits=torch.randn(2, 5, 4), masks=torch.randn(2, 5, 4, 4))

    return {
        "main": pred(),
        "aux": {"side3": pred()},
        "vq_losses": [torch.rand(()) for _ in range(4)],
        "stage_codes": [torch.randn(2, 6, s, s) for s in (8, 4, 2)],
        "reconstruction": torch.rand(2, 3, 32, 32),
    }


def test_every_term_is_weighted_as_documented() -> None:
    crit, inputs = criterion(), step_inputs()
    images, targets = torch.rand(2, 3, 32, 32), targets_from_semseg(labels(), 255)
    torch.manual_seed(3)
    losses = crit(images, targets, **inputs)
    assert list(losses) == [
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_side3",
        "loss_mask_side3",
        "loss_dice_side3",
        "loss_vq",
        "loss_spatial",
        "loss_l1",
        "loss_l2",
        "loss_lpips",
    ]

    torch.manual_seed(3)  # the set losses draw their points first, as in the forward
    sets = crit.set_loss.sets(inputs["main"], inputs["aux"], targets)
    for k, v in sets.items():
        torch.testing.assert_close(losses[k], v, rtol=0, atol=0)
    assert losses["loss_vq"].item() == pytest.approx(0.3 * sum(float(v) for v in inputs["vq_losses"]), rel=1e-6)
    diff = (inputs["reconstruction"] - images).double()
    assert losses["loss_l1"].item() == pytest.approx(1.5 * 0.2 * float(diff.abs().mean()), rel=1e-5)
    assert losses["loss_l2"].item() == pytest.approx(1.5 * 3.0 * float(diff.square().mean()), rel=1e-5)
    assert losses["loss_lpips"].item() == 0.0


def test_spatial_term_is_the_weighted_mean_over_stages() -> None:
    """With the CRF weight at 0 only TV is left: 0.7 * mean_s(5 * TV_s); the CRF weight then adds a positive part."""
    inputs = step_inputs()
    images, targets = torch.rand(2, 3, 32, 32), targets_from_semseg(labels(), 255)
    tv_only = criterion(crf_weight=0.0)(images, targets, **inputs)["loss_spatial"]
    expected = 0.7 * sum(5.0 * float(tv_loss(codes.double())) for codes in inputs["stage_codes"]) / 3
    assert tv_only.item() == pytest.approx(expected, rel=1e-5)
    with_crf = criterion()(images, targets, **inputs)["loss_spatial"]
    assert with_crf.item() > tv_only.item() + 1e-3


def direct_spatial(images: torch.Tensor, stage_codes: list[torch.Tensor], crf: float, tv: float) -> float:
    """Mean over stages of crf * CRF + tv * TV from the functions themselves; the CRF draws its pixels from the
    global RNG stage by stage, as the criterion does."""
    total = 0.0
    for codes in (c.detach() for c in stage_codes):
        guide = torch.nn.functional.interpolate(images, size=codes.shape[-2:], mode="bilinear", antialias=True)
        total += crf * float(crf_loss(imagenet_normalize(guide), codes, num_points=16)) + tv * float(tv_loss(codes))
    return total / len(stage_codes)


@pytest.mark.parametrize("name", ["equal", "featup"])
def test_spatial_inner_weights_by_name(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``featup`` is 0.001 CRF with TV never computed; ``equal`` is CRF + TV."""
    weights = SPATIAL_INNER_WEIGHTS[name]
    crit = criterion(crf_weight=weights.crf, tv_weight=weights.tv)
    inputs, images = step_inputs(), torch.rand(2, 3, 32, 32)
    tv_calls = []
    monkeypatch.setattr(spatial, "tv_loss", lambda x: tv_calls.append(x) or tv_loss(x))
    torch.manual_seed(8)
    got = crit.spatial(images, inputs["stage_codes"]).item()
    assert len(tv_calls) == (3 if name == "equal" else 0)
    torch.manual_seed(8)
    expected = direct_spatial(images, inputs["stage_codes"], *((1.0, 1.0) if name == "equal" else (0.001, 0.0)))
    assert got == pytest.approx(expected, rel=1e-5)
    if name == "featup":
        torch.manual_seed(8)
        assert got == pytest.approx(0.001 * direct_spatial(images, inputs["stage_codes"], 1.0, 0.0), rel=1e-5)


def naive_rms_norms(codes: torch.Tensor) -> list[float]:
    """Per image: sqrt of the mean over positions of |z_q(h, w)|^2, one position at a time."""
    out = []
    for image in codes.detach().double():
        sq = [float((image[:, h, w] ** 2).sum()) for h in range(image.shape[1]) for w in range(image.shape[2])]
        out.append(math.sqrt(sum(sq) / len(sq)))
    return out


def test_raw_codes_are_rescaled_before_crf_and_tv() -> None:
    """unit_codes=False: CRF and TV see each image's codes divided by their RMS norm (a constant for the gradient),
    so rescaling an image's codes changes nothing; unit codes are left as they are."""
    crit, raw = criterion(unit_codes=False), criterion()
    images = torch.rand(2, 3, 32, 32)
    codes = [(torch.randn(2, 6, s, s) * 4.0).requires_grad_(True) for s in (8, 4, 2)]
    torch.manual_seed(2)
    got = crit.spatial(images, codes)
    got.backward()
    scaled = [(c.detach() / torch.tensor(naive_rms_norms(c)).view(2, 1, 1, 1)).requires_grad_(True) for c in codes]
    torch.manual_seed(2)
    assert got.item() == pytest.approx(direct_spatial(images, scaled, 2.0, 5.0), rel=1e-5)
    torch.manual_seed(2)
    reference = raw.spatial(images, scaled)
    reference.backward()
    for c, ref in zip(codes, scaled):  # d/dz of L(z / s) with s fixed: the gradient at z / s, divided by s
        s = torch.tensor(naive_rms_norms(c)).view(2, 1, 1, 1)
        torch.testing.assert_close(c.grad, ref.grad / s, rtol=1e-4, atol=1e-7)

    per_image = torch.tensor([10.0, 0.1]).view(2, 1, 1, 1)
    torch.manual_seed(2)
    assert crit.spatial(images, [c.detach() * per_image for c in codes]).item() == pytest.approx(got.item(), rel=1e-5)
    torch.manual_seed(2)
    assert raw.spatial(images, [c.detach() for c in codes]).item() > 10 * got.item()  # the plain scale is ~16x

    unit = [torch.nn.functional.normalize(c.detach(), dim=1) for c in codes]
    torch.manual_seed(2)
    as_raw = crit.spatial(images, unit)
    torch.manual_seed(2)
    assert as_raw.item() == pytest.approx(raw.spatial(images, unit).item(), rel=1e-5)


def test_spatial_alignment_off_drops_only_loss_spatial() -> None:
    inputs = step_inputs()
    images, targets = torch.rand(2, 3, 32, 32), targets_from_semseg(labels(), 255)
    torch.manual_seed(1)
    full = criterion()(images, targets, **inputs)
    torch.manual_seed(1)
    ablated = criterion(spatial_alignment=False)(images, targets, **inputs)
    assert set(full) - set(ablated) == {"loss_spatial"} and set(ablated) <= set(full)
    for k, v in ablated.items():
        torch.testing.assert_close(v, full[k], rtol=0, atol=0, msg=k)


def test_prepare_needs_the_vgg_file_only_for_the_perceptual_term(tmp_path) -> None:
    crit = PatCriterion(set_loss=SetCriterion(), reconstruction=ReconstructionLoss(perceptual_weight=0.1))
    with pytest.raises(MissingFileError, match=VGG16_FILE):
        crit.prepare(str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="no file was given"):
        crit.prepare()
    criterion().prepare()  # perceptual weight 0: nothing to build, no file needed
    assert len(crit.state_dict()) == 0


def test_rec_weight_reaches_lpips() -> None:
    rec = ReconstructionLoss(perceptual_weight=0.5, lpips_size=32, random_trunk=True)
    crit = PatCriterion(set_loss=SetCriterion(num_points=16), reconstruction=rec, rec_weight=2.0, crf_points=16)
    crit.prepare()
    assert rec.lpips_net is not None and len(crit.state_dict()) == 0  # LPIPS stays out of checkpoints
    inputs, images = step_inputs(), torch.rand(2, 3, 32, 32)
    losses = crit(images, targets_from_semseg(labels(), 255), **inputs)
    lpips = rec.perceptual(inputs["reconstruction"], images)
    assert float(lpips) > 0
    assert losses["loss_lpips"].item() == pytest.approx(2.0 * 0.5 * float(lpips), rel=1e-5)


def test_losses_layer_does_not_import_the_models() -> None:
    code = (
        "import sys, patseg.losses, patseg.losses.pat_criterion; "
        "print(sorted(m for m in sys.modules if m.startswith('patseg.models')))"
    )
    src = str(Path(patseg.__file__).parents[1])  # the patseg under test, not another installed copy
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
