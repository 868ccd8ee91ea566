"""PAT's loss settings reach the modules that compute them: ``loss.commitment`` sets β in all four quantizers (the
VQ loss follows the ViT-VQGAN formula with that β, computed here by hand on the inputs each quantizer saw), and
``loss.spatial_inner`` picks the inner CRF / TV weights by name. Weights files that record the replaced keys load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from naive import toy_batch, unit_rows
from patseg.build import build_model
from patseg.config import parse_assignments
from patseg.errors import ConfigError
from patseg.losses.pat_criterion import rms_norm
from patseg.losses.spatial import spatial_alignment_loss
from patseg.models.pat.model import PAT
from patseg.models.pat.vmf_quantizer import QuantizerOutput, VMFQuantizer
from patseg.weights.files import CONFIG_METADATA_KEY, read_tensors, save_weights


def tiny_pat(**overrides) -> PAT:
    torch.manual_seed(0)
    return build_model("pat_tiny", overrides=overrides)


def quantizers(model: PAT) -> list[VMFQuantizer]:
    """The early, mid, late and latent quantizers."""
    return [stage.quantizer for stage in model.pixel_branch.pyramid_stages] + [model.pixel_branch.latent_quantizer]


def record_quantizers(model: PAT) -> list[tuple[VMFQuantizer, torch.Tensor, QuantizerOutput]]:
    """(quantizer, input z (B, D, h, w), output) of every quantizer call of the next forwards."""
    calls: list[tuple[VMFQuantizer, torch.Tensor, QuantizerOutput]] = []
    for q in quantizers(model):
        q.register_forward_hook(lambda m, args, out: calls.append((m, args[0].detach(), out)))
    return calls


def hand_vq_terms(quantizer: VMFQuantizer, z: torch.Tensor, indices: torch.Tensor) -> tuple[float, float]:
    """(codebook term, commitment term) in float64 for the unit-sphere quantizer, one position at a time:
    each is the mean over positions and channels of |ê - ẑ|^2 (their values agree; their gradients do not)."""
    codes = F.normalize(quantizer.codebook.detach().double(), dim=-1)
    total, count = 0.0, 0
    batch, dim, height, width = z.shape
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                x = z[b, :, h, w].double()
                x = x / x.norm()
                total += float(((codes[indices[b, h, w]] - x) ** 2).sum())
                count += dim
    return total / count, total / count


def test_loss_commitment_reaches_every_quantizer_and_the_vq_loss() -> None:
    images, labels = toy_batch()
    results = {}
    for beta in (0.25, 0.5):
        model = tiny_pat(**{"loss.commitment": beta}).train()
        assert [q.commitment for q in quantizers(model)] == [beta] * 4
        calls = record_quantizers(model)
        loss_vq = model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses["loss_vq"]
        assert len(calls) == 4
        expected = 0.0
        for quantizer, z, out in calls:
            codebook_term, commitment_term = hand_vq_terms(quantizer, z, out.indices)
            assert commitment_term > 0.01
            assert out.loss.item() == pytest.approx(codebook_term + beta * commitment_term, rel=1e-5)
            expected += codebook_term + beta * commitment_term
        assert loss_vq.item() == pytest.approx(0.1 * expected, rel=1e-5)
        results[beta] = (loss_vq.item(), sum(hand_vq_terms(q, z, out.indices)[1] for q, z, out in calls))
    # Same weights, same inputs: doubling β adds 0.1 * 0.25 * (the summed commitment terms) to loss_vq.
    (low, commit_low), (high, commit_high) = results[0.25], results[0.5]
    assert commit_high == pytest.approx(commit_low, rel=1e-9)
    assert high - low == pytest.approx(0.1 * 0.25 * commit_low, rel=1e-4)


def test_spatial_inner_is_a_named_choice() -> None:
    assert (tiny_pat().criterion.crf_weight, tiny_pat().criterion.tv_weight) == (1.0, 1.0)
    featup = tiny_pat(**{"loss.spatial_inner": "featup"}).criterion
    assert (featup.crf_weight, featup.tv_weight) == (0.001, 0.0)
    with pytest.raises(ConfigError, match=r"'loss\.spatial_inner' must be one of 'equal', 'featup'"):
        tiny_pat(**{"loss.spatial_inner": "crf"})
    for key in ("loss.crf_weight", "loss.tv_weight"):
        with pytest.raises(ConfigError, match=rf"unknown config key '{key}'"):
            tiny_pat(**parse_assignments([f"{key}=1.0"]))


def test_weights_files_recording_replaced_keys_still_load(tmp_path) -> None:
    """pat.aux_sets, loss.crf_weight and loss.tv_weight are dropped from older records: the aux sets then follow
    side.deep_supervision and the inner spatial weights take loss.spatial_inner's default."""
    model = tiny_pat()
    path = save_weights(model, tmp_path / "old.safetensors")
    tensors, meta = read_tensors(path)
    record = json.loads(meta[CONFIG_METADATA_KEY])
    record["pat"]["aux_sets"] = ["side4"]
    record["loss"].update(crf_weight=0.5, tv_weight=2.0)
    del record["loss"]["spatial_inner"]
    save_file(tensors, str(path), metadata={**meta, CONFIG_METADATA_KEY: json.dumps(record)})
    loaded = build_model(weights=str(path))
    assert loaded.options.aux_sets == ("side3", "side4")
    assert (loaded.config.loss.spatial_inner, loaded.criterion.crf_weight, loaded.criterion.tv_weight) == (
        "equal",
        1.0,
        1.0,
    )
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def vq_and_spatial(vmf: bool) -> dict[str, float]:
    """loss_vq and loss_spatial of pat_tiny on the toy batch, as trained and as they would be without the
    scale normalisation of raw codes (``*_plain``, by hand), with the spatial terms of one CRF draw (``*_drawn``)."""
    model = tiny_pat(**{"pat.vmf": vmf}).train()
    calls = record_quantizers(model)
    images, labels = toy_batch()
    torch.manual_seed(0)
    losses = model.training_losses(images, labels, unit_rows(4, model.clip.out_dim)).losses
    beta, crit = model.config.loss.commitment, model.criterion
    plain_vq = 0.0
    for quantizer, z, out in calls:  # codebook and commitment terms have one value: (1 + β) mean |ê - ẑ|^2
        inputs = F.normalize(z.double(), dim=1) if vmf else z.double()
        chosen = quantizer.codes().detach().double()[out.indices].permute(0, 3, 1, 2)
        plain_vq += (1 + beta) * float((chosen - inputs).pow(2).mean())
    stage_codes = [out.z_q.detach() for q, _, out in calls if q is not model.pixel_branch.latent_quantizer]

    def drawn(codes: list[torch.Tensor]) -> float:
        terms = [
            spatial_alignment_loss(images, c, num_points=crit.crf_points, generator=torch.Generator().manual_seed(i))
            for i, c in enumerate(codes)
        ]
        return crit.spatial_weight * sum(float(t.total) for t in terms) / len(terms)

    return {
        "vq": losses["loss_vq"].item(),
        "vq_plain": crit.vq_weight * plain_vq,
        "spatial": losses["loss_spatial"].item(),
        "spatial_drawn": drawn([c if vmf else c / rms_norm(c) for c in stage_codes]),
        "spatial_plain": drawn(stage_codes),
    }


def test_no_vmf_keeps_the_loss_scale() -> None:
    """Table II "No vMF meanshift" changes the clustering only: at initialisation its VQ and spatial losses are
    within 3x of the vMF run's, where the plain Euclidean losses on raw N(0, 1) codes would be over 5x."""
    unit, raw = vq_and_spatial(True), vq_and_spatial(False)
    assert unit["vq_plain"] == pytest.approx(unit["vq"], rel=1e-5)  # the hand formula is the model's loss
    assert 1 / 3 < raw["vq"] / unit["vq"] < 3
    assert raw["vq_plain"] / unit["vq"] > 5
    assert 1 / 3 < raw["spatial"] / unit["spatial"] < 3
    assert 1 / 3 < raw["spatial_drawn"] / unit["spatial_drawn"] < 3
    assert raw["spatial_plain"] / unit["spatial_drawn"] > 5
    assert unit["spatial_plain"] == unit["spatial_drawn"]  # unit codes are not rescaled
