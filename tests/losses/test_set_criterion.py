"""SetCriterion: each loss term against a float64 formula, the whole forward against a replay, and training."""

import math
from types import SimpleNamespace

import pytest
import torch
from test_point_sampling import naive_point_sample  # pytest puts this directory on sys.path

from patseg.losses.matcher import HungarianMatcher, SemSegTarget, targets_from_semseg
from patseg.losses.point_sampling import uncertain_point_coords
from patseg.losses.set_criterion import SetCriterion, classification_loss, count_masks, dice_loss, sigmoid_bce_loss


def naive_weighted_ce(logits: torch.Tensor, classes: torch.Tensor, no_object_weight: float) -> float:
    num_outputs = logits.shape[-1]
    numerator = denominator = 0.0
    for b in range(logits.shape[0]):
        for q in range(logits.shape[1]):
            row = logits[b, q].double().tolist()
            log_norm = math.log(sum(math.exp(x) for x in row))
            y = classes[b, q].item()
            weight = no_object_weight if y == num_outputs - 1 else 1.0
            numerator += weight * (log_norm - row[y])
            denominator += weight
    return numerator / denominator


def naive_mask_losses(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> tuple[float, float]:
    bce = dice = 0.0
    for x_row, t_row in zip(logits.double().tolist(), labels.double().tolist()):
        probs = [1 / (1 + math.exp(-x)) for x in x_row]
        bce += sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(probs, t_row)) / len(x_row)
        overlap = 2 * sum(p * t for p, t in zip(probs, t_row))
        dice += 1 - (overlap + 1) / (sum(probs) + sum(t_row) + 1)
    return bce / num_masks, dice / num_masks


def label_maps() -> torch.Tensor:
    """Two 16x16 maps over 4 classes: image 0 has classes 0, 2 and ignore; image 1 has classes 1, 3."""
    labels = torch.zeros(2, 16, 16, dtype=torch.int64)
    labels[0, :, 8:] = 2
    labels[0, 12:] = 255
    labels[1, :8] = 1
    labels[1, 8:] = 3
    return labels


def test_classification_loss_matches_weighted_average():
    logits = torch.randn(2, 5, 4, dtype=torch.float64)
    classes = torch.tensor([[0, 3, 3, 2, 3], [3, 1, 3, 3, 0]])
    loss = classification_loss(logits, classes, no_object_weight=0.1)
    assert loss.item() == pytest.approx(naive_weighted_ce(logits, classes, 0.1), rel=1e-6)


def test_point_losses_match_loops():
    logits = torch.randn(3, 11, dtype=torch.float64)
    labels = torch.rand(3, 11, dtype=torch.float64).round()
    labels[1] = torch.rand(11, dtype=torch.float64)
    bce, dice = naive_mask_losses(logits, labels, 2.5)
    assert sigmoid_bce_loss(logits, labels, 2.5).item() == pytest.approx(bce, rel=1e-10)
    assert dice_loss(logits, labels, 2.5).item() == pytest.approx(dice, rel=1e-10)


def test_forward_equals_its_parts_replayed():
    num_points = 24
    targets = targets_from_semseg(label_maps(), ignore_index=255)
    targets.append(SemSegTarget(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 16, 16, dtype=torch.bool)))
    logits, masks = torch.randn(3, 6, 5), torch.randn(3, 6, 4, 4)
    criterion = SetCriterion(num_points=num_points, oversample_ratio=2.0, importance_sample_ratio=0.5)
    torch.manual_seed(9)
    losses = criterion(logits, masks, targets)

    torch.manual_seed(9)  # replay: matcher points per image with targets, then uncertain points of matched masks
    matches = HungarianMatcher(num_points=num_points)(logits, masks, targets)
    classes = torch.full((3, 6), 4)
    pred_rows, target_rows = [], []
    for b, (rows, cols) in enumerate(matches):
        classes[b, rows] = targets[b].labels[cols]
        pred_rows.append(masks[b, rows])
        target_rows.append(targets[b].masks[cols].float())
    matched, matched_targets = torch.cat(pred_rows), torch.cat(target_rows)
    assert matched.shape[0] == 4
    coords = uncertain_point_coords(matched.unsqueeze(1), num_points, 2.0, 0.5)
    bce, dice = naive_mask_losses(
        naive_point_sample(matched.unsqueeze(1), coords)[:, 0],
        naive_point_sample(matched_targets.unsqueeze(1), coords)[:, 0],
        num_masks=4.0,
    )
    assert losses["loss_ce"].item() == pytest.approx(2 * naive_weighted_ce(logits, classes, 0.1), rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(5 * bce, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(5 * dice, rel=1e-5)


def test_all_ignore_batch_gives_only_no_object_ce():
    targets = targets_from_semseg(torch.full((2, 8, 8), 255), ignore_index=255)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    masks = torch.randn(2, 4, 2, 2, requires_grad=True)
    losses = SetCriterion(num_points=16)(logits, masks, targets)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    expected = -logits.detach().double().log_softmax(-1)[..., -1].mean().item()  # every weight 0.1: plain mean
    assert losses["loss_ce"].item() == pytest.approx(2 * expected, rel=1e-6)
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert masks.grad is not None and (masks.grad == 0).all()


def test_gradients_reach_logits_and_matched_masks_only():
    targets = targets_from_semseg(label_maps(), ignore_index=255)
    logits = torch.randn(2, 5, 5, requires_grad=True)
    masks = torch.randn(2, 5, 4, 4, requires_grad=True)
    criterion = SetCriterion(num_points=32)
    torch.manual_seed(4)
    losses = criterion(logits, masks, targets)
    torch.manual_seed(4)
    matches = criterion.matcher(logits, masks, targets)
    sum(losses.values()).backward()
    assert logits.grad.abs().sum(-1).gt(0).all()  # every query gets a class target
    for b, (rows, _) in enumerate(matches):
        per_query = masks.grad[b].abs().sum((-1, -2))
        unmatched = torch.ones(5, dtype=torch.bool)
        unmatched[rows] = False
        assert per_query[rows].gt(0).all() and per_query[unmatched].eq(0).all()


def test_num_masks_normalises_mask_terms():
    targets = targets_from_semseg(label_maps(), ignore_index=255)
    assert count_masks(targets, torch.device("cpu")) == 4.0
    assert count_masks(targets_from_semseg(torch.full((1, 2, 2), 255), 255), torch.device("cpu")) == 1.0
    logits, masks = torch.randn(2, 5, 5), torch.randn(2, 5, 4, 4)
    criterion = SetCriterion(num_points=16)
    torch.manual_seed(2)
    default = criterion(logits, masks, targets)
    torch.manual_seed(2)
    halved = criterion(logits, masks, targets, num_masks=8.0)
    assert halved["loss_mask"].item() == pytest.approx(default["loss_mask"].item() / 2, rel=1e-6)
    assert halved["loss_dice"].item() == pytest.approx(default["loss_dice"].item() / 2, rel=1e-6)
    assert halved["loss_ce"].item() == pytest.approx(default["loss_ce"].item(), rel=1e-6)


def test_sets_match_each_set_on_its_own_with_one_mask_count(monkeypatch):
    """``sets``: the main terms, then each auxiliary set's terms suffixed with its name, every set matched on its
    own; the mask count is computed once and handed to every set."""
    targets = targets_from_semseg(label_maps(), ignore_index=255)
    main = SimpleNamespace(logits=torch.randn(2, 5, 5), masks=torch.randn(2, 5, 4, 4))  # any MaskSet will do
    aux = {
        name: SimpleNamespace(logits=torch.randn(2, 5, 5), masks=torch.randn(2, 5, 4, 4)) for name in ("side3", "side7")
    }
    criterion = SetCriterion(num_points=16)
    torch.manual_seed(5)
    expected = {"": criterion(main.logits, main.masks, targets, 4.0)}
    for name, pred in aux.items():
        expected["_" + name] = criterion(pred.logits, pred.masks, targets, 4.0)

    counted = []
    monkeypatch.setattr("patseg.losses.set_criterion.count_masks", lambda t, d: counted.append(1) or 4.0)
    torch.manual_seed(5)
    got = criterion.sets(main, aux, targets)
    assert counted == [1]
    assert list(got) == [
        f"{k}{suffix}" for suffix in ("", "_side3", "_side7") for k in ("loss_ce", "loss_mask", "loss_dice")
    ]
    for suffix, terms in expected.items():
        for k, v in terms.items():
            torch.testing.assert_close(got[k + suffix], v, rtol=0, atol=0)
    assert not torch.allclose(got["loss_dice"], got["loss_dice_side3"])  # the sets differ: not one value copied
    assert set(criterion.sets(main, {}, targets)) == {"loss_ce", "loss_mask", "loss_dice"}


def test_rejects_labels_outside_the_vocabulary():
    targets = targets_from_semseg(label_maps(), ignore_index=255)  # labels up to 3 need C >= 4
    with pytest.raises(ValueError, match="target labels"):
        SetCriterion(num_points=8)(torch.randn(2, 5, 4), torch.randn(2, 5, 4, 4), targets)


def test_losses_are_float32_under_autocast():
    targets = targets_from_semseg(label_maps(), ignore_index=255)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = SetCriterion(num_points=16)(
            torch.randn(2, 5, 5).bfloat16(), torch.randn(2, 5, 4, 4).bfloat16(), targets
        )
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_adam_on_free_predictions_drives_the_loss_down():
    targets = targets_from_semseg(label_maps(), ignore_index=255)
    logits = torch.zeros(2, 6, 5, requires_grad=True)
    masks = (0.1 * torch.randn(2, 6, 8, 8)).requires_grad_()
    criterion = SetCriterion(num_points=64)
    optimizer = torch.optim.Adam([logits, masks], lr=0.3)
    history = []
    for _ in range(50):
        total = sum(criterion(logits, masks, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    # the floor is not 0: target points within half a pixel of the border read 0.5 (zero padding), as upstream
    assert sum(history[-5:]) / 5 < 0.3 * history[0]
    for b, (rows, cols) in enumerate(criterion.matcher(logits, masks, targets)):
        predicted = logits[b].argmax(-1)
        assert predicted[rows].tolist() == targets[b].labels[cols].tolist()
        assert (predicted == 4).sum() == 6 - len(rows)  # the other queries learned no-object
