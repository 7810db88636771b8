"""seg-toy, the segmentation task: its data, its metrics (torchmetrics' Dice and IoU against a count by hand),
and compare with region and softmax losses; the losses that do not fit it (or it them) are clear errors."""

from __future__ import annotations

import pytest
import torch

from polyfocal.experiments import compare, make_task, parse_losses
from polyfocal.experiments.segmentation import segmentation_metrics


def test_seg_toy_has_small_foreground_structures():
    task = make_task("seg-toy", n_train=64)
    share = task.summary()["foreground_share"]
    assert task.kind == "segmentation" and task.num_classes == 4 and len(share) == 3
    assert 0.005 <= sum(share) <= 0.05  # the 0.5-5% of the pixels
    assert task.x_train.shape == (64, 1, 32, 32) and task.y_train.shape == (64, 32, 32)
    assert set(task.y_train.unique().tolist()) == {0, 1, 2, 3}


def test_dice_and_iou_are_each_class_s_over_all_test_pixels():
    labels = torch.tensor([[[0, 1, 1], [2, 2, 0]], [[0, 0, 3], [3, 3, 0]]])
    pred = torch.tensor([[[0, 1, 0], [2, 2, 2]], [[0, 0, 3], [0, 3, 3]]])
    logits = torch.nn.functional.one_hot(pred, 4).movedim(-1, 1).float()
    got = segmentation_metrics(logits, labels)
    tp, fp, fn = torch.tensor([1.0, 2, 2]), torch.tensor([0.0, 1, 1]), torch.tensor([1.0, 0, 1])
    dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    assert got["dice"] == pytest.approx(dice.mean().item()) and got["iou"] == pytest.approx(iou.mean().item())
    assert [got[f"dice_{c}"] for c in (1, 2, 3)] == pytest.approx(dice.tolist())


def test_compare_trains_region_and_softmax_losses_on_seg_toy():
    task = make_task("seg-toy", n_train=8)
    specs = parse_losses("ce,dice_focal:pixel_loss=cross_entropy:batch=true,focal_tversky,unified_focal")
    results = compare(task, specs, [0], epochs=1)
    assert results["metrics"] == ["dice", "iou"] and results["config"]["normalizer"] == "pixels"
    for run in results["runs"]:
        assert 0.0 <= run["metrics"]["dice"] <= 1.0 and len(run["curves"]["train_loss"]) == 1


def test_losses_that_do_not_fit_the_task_are_clear_errors():
    with pytest.raises(ValueError, match="'bce' is a sigmoid loss; task 'seg-toy'"):
        compare(make_task("seg-toy", n_train=8), parse_losses("bce"), [0], epochs=1)
    with pytest.raises(ValueError, match="'dice' is a region loss; task 'digits-lt'"):
        compare(make_task("digits-lt"), parse_losses("dice"), [0], epochs=1)
    with pytest.raises(ValueError, match="`--losses`: cannot build 'focal_tversky:gamma=-1'"):
        parse_losses("focal_tversky:gamma=-1")
