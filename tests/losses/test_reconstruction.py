"""Reconstruction head and loss: shapes, ranges, parameter counts, L1/L2 formulas, LPIPS wiring and weight loading.

LPIPS-VGG construction initialises a full torchvision VGG16 (a few seconds on CPU), so the networks are built once
per module.
"""

import pytest
import torch
import torchvision

from patseg.errors import MissingFileError
from patseg.losses.reconstruction import VGG16_FILE, VGG16_SETTING, ReconstructionLoss, load_vgg16_trunk
from patseg.models.pat.reconstruction_head import ReconstructionHead


def test_head_shape_range_and_parameter_count():
    head = ReconstructionHead(256, num_upsamples=3)
    convt = [m for m in head.layers if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convt] == [(256, 128), (128, 64), (64, 32)]
    expected = sum(cin * cout * 16 + cout for cin, cout in [(256, 128), (128, 64), (64, 32)]) + (32 * 3 * 9 + 3)
    assert sum(p.numel() for p in head.parameters()) == expected == 689219
    out = head(torch.randn(2, 256, 3, 5) * 10)
    assert out.shape == (2, 3, 24, 40)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0


def test_head_custom_widths():
    head = ReconstructionHead(32, num_upsamples=2, widths=(16, 8))
    assert head(torch.randn(1, 32, 16, 16)).shape == (1, 3, 64, 64)
    assert [m.out_channels for m in head.layers if isinstance(m, torch.nn.ConvTranspose2d)] == [16, 8]
    with pytest.raises(ValueError, match="one entry per"):
        ReconstructionHead(32, num_upsamples=3, widths=(16, 8))


def test_head_gradient_reaches_features():
    head = ReconstructionHead(16, num_upsamples=2)
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    head(x).mean().backward()
    assert x.grad.abs().sum() > 0


def test_l1_l2_terms_match_formulas():
    loss = ReconstructionLoss(l1_weight=0.3, l2_weight=2.0, perceptual_weight=0.0)
    recon, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    terms = loss(recon, target)
    diffs = [(r - t) for r, t in zip(recon.flatten().tolist(), target.flatten().tolist())]
    n = len(diffs)
    assert terms["loss_l1"].item() == pytest.approx(0.3 * sum(abs(d) for d in diffs) / n, rel=1e-5)
    assert terms["loss_l2"].item() == pytest.approx(2.0 * sum(d * d for d in diffs) / n, rel=1e-5)
    assert terms["loss_lpips"].item() == 0.0 and loss.lpips_net is None
    with pytest.raises(ValueError, match="differ in shape"):
        loss(recon, target[:, :, :3])


def test_missing_vgg_file_names_the_file_and_the_setting(tmp_path):
    img = torch.rand(1, 3, 16, 16)
    for path in (None, str(tmp_path / "nothing.pth")):
        loss = ReconstructionLoss()  # building the model (inference, `patseg info`) needs no file
        with pytest.raises(MissingFileError, match=VGG16_FILE) as info:
            loss.build(path)  # what training calls (model.prepare_training) before the first step
        assert isinstance(info.value, FileNotFoundError) and VGG16_SETTING in str(info.value)
        assert (path or "no file was given") in str(info.value)
        with pytest.raises(FileNotFoundError, match=VGG16_FILE):
            loss(img, img)  # built lazily without a file
        assert loss.lpips_net is None
    with pytest.raises(ValueError, match="not both"):
        ReconstructionLoss(random_trunk=True).build(str(tmp_path / "x.pth"))
    ReconstructionLoss(perceptual_weight=0.0).build(None)  # no perceptual term: no file needed


@pytest.fixture(scope="module")
def random_loss():
    torch.manual_seed(0)
    return ReconstructionLoss(perceptual_weight=0.5, lpips_size=32, random_trunk=True)


def test_lpips_zero_for_identical_positive_otherwise(random_loss):
    target = torch.rand(2, 3, 48, 48)
    assert random_loss(target, target.clone())["loss_lpips"].abs().item() < 1e-6
    noisy = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    term = random_loss(noisy, target)["loss_lpips"]
    assert term.item() > 1e-4
    assert term.item() == pytest.approx(0.5 * random_loss.perceptual(noisy, target).item(), rel=1e-6)


def test_lpips_is_frozen_and_outside_state_dict(random_loss):
    assert list(random_loss.parameters()) == [] and len(random_loss.state_dict()) == 0
    assert not any(p.requires_grad for p in random_loss.lpips_net.parameters())
    random_loss.train()
    assert not random_loss.lpips_net.training
    random_loss.double()  # moves reach the unregistered network
    assert next(random_loss.lpips_net.parameters()).dtype == torch.float64
    random_loss.float()
    recon = torch.rand(1, 3, 32, 32, requires_grad=True)
    random_loss(recon, torch.rand(1, 3, 32, 32))["loss_lpips"].backward()
    assert recon.grad.abs().sum() > 0


def test_lpips_loads_torchvision_vgg16_state_dict(tmp_path):
    with torch.device("meta"):  # skip the slow random init: the tensors kept are filled below
        vgg = torchvision.models.vgg16(weights=None)
    vgg = vgg.to_empty(device="cpu")
    # The real file also holds classifier.0 and classifier.3 (470 MB); they are left out to keep the test fast.
    # The loader reads only features.*; classifier.6 stays in the file to show that extra keys are ignored.
    state = {k: v for k, v in vgg.state_dict().items() if not k.startswith(("classifier.0", "classifier.3"))}
    with torch.no_grad():
        for tensor in state.values():
            tensor.normal_(std=0.05)
    path = tmp_path / VGG16_FILE
    torch.save(state, path)
    loss = ReconstructionLoss(lpips_size=32)
    loss.build(str(path))
    trunk = loss.lpips_net.net
    torch.testing.assert_close(getattr(trunk.slice1, "0").weight, vgg.features[0].weight)
    torch.testing.assert_close(getattr(trunk.slice3, "14").bias, vgg.features[14].bias)
    torch.testing.assert_close(getattr(trunk.slice5, "28").weight, vgg.features[28].weight)
    target = torch.rand(1, 3, 32, 32)
    assert loss(target, target)["loss_lpips"].abs().item() < 1e-6
    assert loss(torch.rand(1, 3, 32, 32), target)["loss_lpips"].item() > 0
    broken = {k: v for k, v in state.items() if k != "features.10.weight"}
    with pytest.raises(KeyError, match="features.10.weight"):
        load_vgg16_trunk(trunk, broken)
