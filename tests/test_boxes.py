"""Box regression on dense-toy (:mod:`polyfocal.experiments.boxes`): targets, IoU, losses, metrics."""

import json

import numpy as np
import pytest
import torch

import polyfocal as pf
from polyfocal import experiments as ex
from polyfocal.cli import main
from polyfocal.experiments import boxes as B
from polyfocal.experiments import metrics as M


def _ltrb(*values):
    """One location's distances as a (1, 4, 1, 1) tensor."""
    return torch.tensor(values, dtype=torch.float64).view(1, 4, 1, 1)


def test_dense_toy_box_targets_describe_the_objects():
    task = ex.make_task("dense-toy", n_train=32)
    labels, boxes = task.y_train, task.boxes_train
    positive = labels < 3
    d = boxes.permute(0, 2, 3, 1)[positive]
    widths, heights = d[:, 0] + d[:, 2], d[:, 1] + d[:, 3]
    # objects are 3 or 4 pixels wide and square; every distance reaches from a pixel centre
    assert set(widths.unique().tolist()) <= {3.0, 4.0} and torch.equal(widths, heights)
    assert d.min() == 0.5 and d.max() <= 3.5
    assert (boxes.permute(0, 2, 3, 1)[~positive] == 0).all()
    # the first positive in raster order is a box's top-left pixel: half a pixel from its left and top edges
    i, r, c = (int(v) for v in positive.nonzero()[0])
    assert boxes[i, 0, r, c] == 0.5 and boxes[i, 1, r, c] == 0.5


def test_overlap_by_hand():
    same = _ltrb(1.0, 2.0, 3.0, 1.0)
    assert B.overlap(same, same).item() == pytest.approx(1.0)
    # pred 2x2 (1 each way) inside target 4x4 (2 each way): 4 / 16
    assert B.overlap(_ltrb(1, 1, 1, 1), _ltrb(2, 2, 2, 2)).item() == pytest.approx(0.25)
    # shifted: pred l=1,r=2 (w 3), t=b=1 (h 2); target l=2,r=1 (w 3), h 2: overlap w 2 -> 4 / (6 + 6 - 4)
    assert B.overlap(_ltrb(1, 1, 2, 1), _ltrb(2, 1, 1, 1)).item() == pytest.approx(0.5)
    # negative predicted distances count as 0, never a negative area
    assert B.overlap(_ltrb(-1, -1, -1, -1), _ltrb(1, 1, 1, 1)).item() == 0.0


def test_decode_and_box_loss():
    torch.manual_seed(0)
    target = torch.rand(2, 4, 3, 3) * 3
    positive = torch.zeros(2, 3, 3, dtype=torch.bool)
    positive[0, 1, 1] = positive[1, 0, 2] = True
    n = torch.tensor(2.0)
    # l1: the mean absolute error over the positives' 4 edges
    pred = torch.randn(2, 4, 3, 3, requires_grad=True)
    want = (pred - target).abs().permute(0, 2, 3, 1)[positive].mean()
    torch.testing.assert_close(B.box_loss("l1", pred, target, positive, n), want)
    assert B.decode("l1", pred) is pred
    # dfl: the library's DFL on the positives' edges, each a distribution over BINS bins
    bins = torch.randn(2, 4 * B.BINS, 3, 3)
    per_edge = bins.view(2, 4, B.BINS, 3, 3).permute(0, 3, 4, 1, 2)[positive].reshape(-1, B.BINS)
    want = pf.distribution_focal_loss(per_edge, target.permute(0, 2, 3, 1)[positive].reshape(-1), reduction="sum") / 8
    torch.testing.assert_close(B.box_loss("dfl", bins, target, positive, n), want)
    decoded = B.decode("dfl", bins)
    assert decoded.shape == (2, 4, 3, 3)
    torch.testing.assert_close(decoded[1, 2, 0, 1], pf.decode_distribution(bins.view(2, 4, B.BINS, 3, 3)[1, 2, :, 0, 1], dim=0))


def test_box_metrics_perfect_and_wrong_boxes():
    labels = np.full((1, 2, 3), 3)
    labels[0, 0, :2] = 0
    target = torch.zeros(1, 4, 2, 3, dtype=torch.float64)
    target[0, :, 0, :2] = 1.0
    scores = np.zeros((1, 3, 2, 3))
    scores[0, 0, 0, :2] = 0.9
    perfect = B.box_metrics(target.clone(), target, labels, scores, 3)
    assert perfect == {"map_box": 1.0, "loc_error": 0.0}
    # boxes half the size: IoU 1/4 at both positives, below every threshold -> AP 0; error 0.5 px
    half = B.box_metrics(target / 2, target, labels, scores, 3)
    assert half == {"map_box": 0.0, "loc_error": 0.5}
    # one box right, one wrong: at each threshold the right one is a hit ranked by its score
    mixed_pred = target.clone()
    mixed_pred[0, :, 0, 1] = 0.5
    scores[0, 0, 0, 0] = 0.8  # the right one ranks second
    mixed = B.box_metrics(mixed_pred, target, labels, scores, 3)
    assert mixed["map_box"] == pytest.approx(0.5) and mixed["loc_error"] == pytest.approx(0.25)


def test_parse_box_losses():
    specs = ex.parse_losses("qfl+dfl,sigmoid_focal+l1:gamma=1")
    assert [(s.name, s.box, s.params) for s in specs] == [("quality_focal_loss", "dfl", {}),
                                                          ("sigmoid_focal_loss", "l1", {"gamma": 1})]
    assert specs[1].label == "sigmoid_focal+l1:gamma=1"


@pytest.mark.parametrize("text, task, fragment", [
    ("qfl+giou", "dense-toy", "unknown box loss 'giou'"),
    ("ce+l1", "digits-lt", "box loss goes with a sigmoid loss"),
    ("bce+l1", "tabular-imbalanced", "has no box targets"),
    ("qfl+dfl,sigmoid_focal", "dense-toy", "every loss a box loss"),
])
def test_box_loss_errors(tmp_path, capsys, text, task, fragment):
    if task != "dense-toy":
        pytest.importorskip("sklearn")
    argv = ["compare", "--task", task, "--losses", text, "--epochs", "1", "--quiet", "--out", str(tmp_path)]
    if task == "tabular-imbalanced":
        argv += ["--n-train", "300"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--losses" in err and fragment in err


def test_quality_target_is_the_predicted_iou():
    task = ex.make_task("dense-toy", n_train=8)
    seen = []
    ex.train_run(task, ex.parse_losses("qfl+dfl")[0], seed=0, epochs=1, batch_size=8,
                 on_batch=lambda logits, target: seen.append(target))
    labels, quality = seen[0]
    positive = labels < 3
    assert quality.shape == labels.shape and quality.dtype.is_floating_point
    assert (quality[positive] > 0).all() and (quality[positive] <= 1).all()
    # the plain focal spec trains on labels alone
    seen.clear()
    ex.train_run(task, ex.parse_losses("sigmoid_focal+l1")[0], seed=0, epochs=1, batch_size=8,
                 on_batch=lambda logits, target: seen.append(target))
    assert isinstance(seen[0], torch.Tensor) and seen[0].dtype == torch.long


def test_compare_with_boxes_learns_to_localise(tmp_path):
    argv = ["compare", "--task", "dense-toy", "--losses", "sigmoid_focal+l1,qfl+dfl", "--seeds", "1",
            "--epochs", "15", "--n-train", "64", "--batch-size", "16", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"] == ["map_box", "map", "loc_error"] and results["primary"] == "map_box"
    assert [loss["box"] for loss in results["config"]["losses"]] == ["l1", "dfl"]
    for run in results["runs"]:
        # distances are 0.5-3.5 px: predicting their mean (~1.7) errs by ~0.8 px
        assert run["metrics"]["loc_error"] < 0.6, run
        assert "test_map_box" in run["curves"]
    assert "loc_error (lower better)" in (tmp_path / "report.md").read_text()


def test_average_precisions_share_one_sort():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(300), 2)  # ties
    columns = rng.random((300, 4)) < [0.05, 0.3, 0.0, 1.0]
    got = M.average_precisions(columns, scores)
    for k in range(4):
        want = M.average_precision(columns[:, k], scores) if columns[:, k].any() else np.nan
        np.testing.assert_allclose(got[k], want, equal_nan=True)
    assert np.isnan(got[2]) and got[3] == 1.0
    with pytest.raises(ValueError, match="shape \\(n, k\\)"):
        M.average_precisions(columns[:5], scores)
