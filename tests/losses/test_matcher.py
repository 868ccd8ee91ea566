"""Hungarian matcher against brute-force enumeration and float64 loop references for its costs."""

import itertools
import math

import pytest
import torch
from test_point_sampling import naive_point_sample  # pytest puts this directory on sys.path

from patseg.losses.matcher import (
    HungarianMatcher,
    SemSegTarget,
    assign,
    pairwise_dice,
    pairwise_sigmoid_bce,
    targets_from_semseg,
)


def brute_force_assignment(cost: torch.Tensor) -> tuple[float, set]:
    """Minimum total cost over every one-to-one assignment of min(Q, n) pairs, and the minimising pairs."""
    num_queries, num_targets = cost.shape
    best, best_pairs = math.inf, set()
    if num_queries >= num_targets:
        candidates = (
            list(zip(rows, range(num_targets))) for rows in itertools.permutations(range(num_queries), num_targets)
        )
    else:
        candidates = (
            list(zip(range(num_queries), cols)) for cols in itertools.permutations(range(num_targets), num_queries)
        )
    for pairs in candidates:
        total = sum(cost[q, t].item() for q, t in pairs)
        if total < best:
            best, best_pairs = total, set(pairs)
    return best, best_pairs


def naive_bce(logit: float, target: float) -> float:
    prob = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(prob) + (1 - target) * math.log(1 - prob))


def naive_dice(logits: list, targets: list) -> float:
    probs = [1.0 / (1.0 + math.exp(-x)) for x in logits]
    overlap = 2 * sum(p * t for p, t in zip(probs, targets))
    return 1 - (overlap + 1) / (sum(probs) + sum(targets) + 1)


@pytest.mark.parametrize("num_queries,num_targets", [(q, n) for q in range(1, 6) for n in range(1, 4)])
def test_assign_equals_brute_force(num_queries, num_targets):
    for _ in range(3):
        cost = torch.randn(num_queries, num_targets, dtype=torch.float64)
        rows, cols = assign(cost)
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == min(num_queries, num_targets)
        best, best_pairs = brute_force_assignment(cost)
        assert set(zip(rows.tolist(), cols.tolist())) == best_pairs
        assert cost[rows, cols].sum().item() == pytest.approx(best)


def test_assign_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        assign(torch.tensor([[0.0, float("nan")]]))


def test_pairwise_costs_match_loops():
    logits = torch.randn(4, 9, dtype=torch.float64)
    targets = (torch.rand(3, 9, dtype=torch.float64) > 0.5).double()
    targets[2] = torch.rand(9, dtype=torch.float64)  # soft values (bilinear reads of mask edges)
    bce, dice = pairwise_sigmoid_bce(logits, targets), pairwise_dice(logits, targets)
    for q in range(4):
        for t in range(3):
            expected_bce = sum(naive_bce(logits[q, p].item(), targets[t, p].item()) for p in range(9)) / 9
            assert bce[q, t].item() == pytest.approx(expected_bce, rel=1e-10)
            assert dice[q, t].item() == pytest.approx(naive_dice(logits[q].tolist(), targets[t].tolist()), rel=1e-10)


def test_cost_matrix_matches_naive_formula():
    num_points = 16
    logits, masks = torch.randn(5, 4), torch.randn(5, 3, 3)
    target = SemSegTarget(labels=torch.tensor([2, 0]), masks=torch.rand(2, 12, 12) > 0.5)
    matcher = HungarianMatcher(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=num_points)
    torch.manual_seed(3)
    cost = matcher.cost_matrix(logits, masks, target)

    torch.manual_seed(3)  # replay the one shared point set
    coords = torch.rand(1, num_points, 2)
    pred = naive_point_sample(masks.unsqueeze(1), coords.expand(5, -1, -1))[:, 0]
    tgt = naive_point_sample(target.masks.float().unsqueeze(1), coords.expand(2, -1, -1))[:, 0]
    probs = logits.double().softmax(-1)
    for q in range(5):
        for t in range(2):
            bce = sum(naive_bce(pred[q, p].item(), tgt[t, p].item()) for p in range(num_points)) / num_points
            expected = (
                5 * bce - 2 * probs[q, target.labels[t]].item() + 5 * naive_dice(pred[q].tolist(), tgt[t].tolist())
            )
            assert cost[q, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_matcher_equals_brute_force_on_its_costs():
    logits, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 4, 4)
    targets = [
        SemSegTarget(torch.tensor([0, 1, 2]), torch.rand(3, 8, 8) > 0.5),
        SemSegTarget(torch.tensor([1, 3]), torch.rand(2, 8, 8) > 0.5),
    ]
    matcher = HungarianMatcher(num_points=32)
    torch.manual_seed(11)
    costs = [matcher.cost_matrix(logits[b], masks[b], targets[b]) for b in range(2)]
    torch.manual_seed(11)
    matches = matcher(logits, masks, targets)
    for cost, (rows, cols) in zip(costs, matches):
        assert set(zip(rows.tolist(), cols.tolist())) == brute_force_assignment(cost)[1]


def test_matcher_recovers_a_permutation_of_the_targets():
    target_masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    target_masks[0, :4], target_masks[1, 4:, :4], target_masks[2, 4:, 4:] = True, True, True
    target = SemSegTarget(labels=torch.tensor([2, 0, 1]), masks=target_masks)
    order = [3, 0, 4]  # target t is predicted by query order[t]; queries 1 and 2 predict nothing
    masks = torch.full((1, 5, 8, 8), -10.0)
    logits = torch.zeros(1, 5, 4)
    logits[0, :, 3] = 5.0
    for t, q in enumerate(order):
        masks[0, q] = torch.where(target_masks[t], 10.0, -10.0)
        logits[0, q] = 0.0
        logits[0, q, target.labels[t]] = 5.0
    rows, cols = HungarianMatcher(num_points=64)(logits, masks, [target])[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 3, 1: 0, 2: 4}


def test_matcher_handles_images_without_targets():
    empty = SemSegTarget(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, 4, dtype=torch.bool))
    rows, cols = HungarianMatcher(num_points=8)(torch.randn(1, 3, 2), torch.randn(1, 3, 2, 2), [empty])[0]
    assert rows.numel() == cols.numel() == 0 and rows.dtype == torch.int64


def test_cost_is_float32_under_autocast():
    logits, masks = torch.randn(4, 3), torch.randn(4, 4, 4)
    target = SemSegTarget(torch.tensor([0, 1]), torch.rand(2, 8, 8) > 0.5)
    matcher = HungarianMatcher(num_points=16)
    torch.manual_seed(5)
    reference = matcher.cost_matrix(logits, masks, target)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = matcher.cost_matrix(logits.bfloat16(), masks.bfloat16(), target)
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, reference, rtol=0.05, atol=0.05)  # inputs were rounded to bf16


def test_targets_from_semseg_hand_made():
    labels = torch.tensor([[[0, 0, 255], [3, 3, 0]], [[255, 255, 255], [255, 255, 255]], [[7, 7, 7], [7, 7, 7]]])
    first, second, third = targets_from_semseg(labels, ignore_index=255)
    assert first.labels.tolist() == [0, 3] and first.labels.dtype == torch.int64
    assert first.masks.dtype == torch.bool
    assert first.masks.int().tolist() == [[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [1, 1, 0]]]
    assert second.labels.numel() == 0 and second.masks.shape == (0, 2, 3)
    assert third.labels.tolist() == [7] and third.masks.all()
