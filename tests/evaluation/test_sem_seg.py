import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from patseg.evaluation import SemSegEvaluator


def naive_metrics(pairs, num_classes, ignore):
    """Float64 reference: per-class pixel counts with explicit loops over classes and images."""
    tp = [0.0] * num_classes
    gt_count = [0.0] * num_classes
    pred_count = [0.0] * num_classes
    for pred, gt in pairs:
        pred = np.asarray(pred).astype(np.int64).ravel()
        gt = np.asarray(gt).astype(np.int64).ravel()
        keep = gt != ignore
        pred, gt = pred[keep], gt[keep]
        for c in range(num_classes):
            tp[c] += float(np.sum((pred == c) & (gt == c)))
            gt_count[c] += float(np.sum(gt == c))
            pred_count[c] += float(np.sum(pred == c))
    ious, accs, present, either = {}, {}, [], 0
    for c in range(num_classes):
        union = gt_count[c] + pred_count[c] - tp[c]
        if union > 0:
            either += 1
        if gt_count[c] > 0:
            present.append(c)
            ious[c] = tp[c] / union
            accs[c] = tp[c] / gt_count[c]
    total = sum(gt_count)
    return {
        "mIoU": 100 * sum(ious.values()) / len(present),
        "mIoU_gt_or_pred": 100 * sum(ious.values()) / either,
        "fwIoU": 100 * sum(gt_count[c] / total * ious[c] for c in present),
        "mACC": 100 * sum(accs.values()) / len(present),
        "pACC": 100 * sum(tp) / total,
        "iou": ious,
    }


def random_pairs(num_classes, ignore, shapes, gt_classes, pred_classes, dtype=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for shape in shapes:
        gt = rng.choice(gt_classes + [ignore], size=shape).astype(dtype)
        pred = rng.choice(pred_classes, size=shape)
        agree = rng.random(shape) < 0.4  # some correct pixels so IoUs are not all tiny
        pred = np.where(agree & (gt != ignore), gt, pred).astype(np.int64)
        pairs.append((pred, gt))
    return pairs


def evaluate(pairs, num_classes, ignore, names=None):
    ev = SemSegEvaluator(num_classes, ignore, names)
    for pred, gt in pairs:
        ev.update(pred, gt)
    return ev.compute()


def assert_matches_naive(result, ref, num_classes):
    for key in ("mIoU", "mIoU_gt_or_pred", "fwIoU", "mACC", "pACC"):
        assert result[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    for c in range(num_classes):
        value = result["per_class"][str(c)]
        if c in ref["iou"]:
            assert value == pytest.approx(100 * ref["iou"][c], rel=1e-12)
        else:
            assert math.isnan(value)


def test_both_rules_match_naive_loop_with_predicted_but_absent_classes():
    # classes 5 and 6 are predicted but never in the ground truth; class 7 appears nowhere
    pairs = random_pairs(8, 255, [(9, 7), (5, 11)], gt_classes=[0, 1, 2, 3, 4], pred_classes=[0, 1, 2, 5, 6])
    result = evaluate(pairs, 8, 255)
    ref = naive_metrics(pairs, 8, 255)
    assert_matches_naive(result, ref, 8)
    assert result["mIoU_gt_or_pred"] < result["mIoU"]  # absent-but-predicted classes count as 0 in the old rule


def test_gt_or_pred_rule_matches_torchmetrics_macro_jaccard():
    pairs = random_pairs(8, 255, [(9, 7), (5, 11)], gt_classes=[0, 1, 2, 3, 4], pred_classes=[0, 1, 2, 5, 6])
    metric = MulticlassJaccardIndex(num_classes=8, average="macro", ignore_index=255)
    for pred, gt in pairs:
        metric.update(torch.from_numpy(pred).flatten(), torch.from_numpy(gt).flatten())
    result = evaluate(pairs, 8, 255)
    assert result["mIoU_gt_or_pred"] == pytest.approx(100 * float(metric.compute()), rel=1e-5)


def test_rules_agree_with_torchmetrics_when_predictions_stay_in_ground_truth_classes():
    pairs = random_pairs(6, 255, [(8, 8), (6, 9)], gt_classes=[0, 1, 3, 4], pred_classes=[0, 1, 3, 4])
    result = evaluate(pairs, 6, 255)
    metric = MulticlassJaccardIndex(num_classes=6, average="macro", ignore_index=255)
    per_class = MulticlassJaccardIndex(num_classes=6, average="none", ignore_index=255)
    for pred, gt in pairs:
        for m in (metric, per_class):
            m.update(torch.from_numpy(pred).flatten(), torch.from_numpy(gt).flatten())
    assert result["mIoU"] == pytest.approx(result["mIoU_gt_or_pred"], rel=1e-12)
    assert result["mIoU"] == pytest.approx(100 * float(metric.compute()), rel=1e-5)
    tm = per_class.compute()
    for c in (0, 1, 3, 4):
        assert result["per_class"][str(c)] == pytest.approx(100 * float(tm[c]), rel=1e-5)


def test_all_ignore_image_changes_nothing():
    pairs = random_pairs(5, 255, [(6, 6)], gt_classes=[0, 1, 2], pred_classes=[0, 1, 2, 3])
    ev = SemSegEvaluator(5, 255)
    ev.update(*pairs[0])
    before = ev.confusion_matrix.clone()
    ev.update(np.full((4, 3), 3), np.full((4, 3), 255, dtype=np.uint8))  # predictions on ignored pixels only
    assert torch.equal(ev.confusion_matrix, before)
    assert_matches_naive(ev.compute(), naive_metrics(pairs, 5, 255), 5)


def test_uint16_labels_with_65535_ignore_numpy_and_torch():
    pairs = random_pairs(
        459, 65535, [(7, 9), (4, 4)], gt_classes=[0, 10, 300, 458], pred_classes=[0, 10, 300, 458, 12], dtype=np.uint16
    )
    assert pairs[0][1].dtype == np.uint16 and (pairs[0][1] == 65535).any()
    ref = naive_metrics(pairs, 459, 65535)
    assert_matches_naive(evaluate(pairs, 459, 65535), ref, 459)
    as_torch = [(torch.from_numpy(p), torch.from_numpy(g)) for p, g in pairs]  # torch.uint16 ground truth
    assert as_torch[0][1].dtype == torch.uint16
    assert_matches_naive(evaluate(as_torch, 459, 65535), ref, 459)


def test_confusion_matrix_counts_and_class_names():
    gt = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [0, 2, 2]])
    ev = SemSegEvaluator(3, 255, class_names=["a", "b", "c"])
    ev.update(torch.from_numpy(pred), torch.from_numpy(gt))
    expected = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0]])  # [gt, pred]
    assert torch.equal(ev.confusion_matrix, expected)
    result = ev.compute()
    assert result["per_class"] == pytest.approx({"a": 100 / 3, "b": 100 / 3, "c": 0.0})
    assert result["pACC"] == pytest.approx(40.0)


def test_invalid_values_and_shapes_raise():
    ev = SemSegEvaluator(3, 255)
    with pytest.raises(ValueError, match="ground truth value 7"):
        ev.update(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="prediction value 3"):
        ev.update(np.full((2, 2), 3), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        ev.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="collides"):
        SemSegEvaluator(3, 2)


def test_empty_evaluator_gives_nan():
    result = SemSegEvaluator(3, 255).compute()
    assert math.isnan(result["mIoU"]) and math.isnan(result["pACC"])
