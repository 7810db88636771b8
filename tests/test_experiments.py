"""``polyfocal compare`` and :mod:`polyfocal.experiments`: metrics by hand, tasks, determinism, errors."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

import polyfocal as pf
from polyfocal import experiments as ex
from polyfocal.cli import main
from polyfocal.experiments import metrics as M
from polyfocal.experiments.report import summarize


# --- metrics against values worked out by hand ----------------------------------------------------

def test_balanced_accuracy():
    # class 0: 2 of 3 right, class 1: 1 of 1 -> (2/3 + 1) / 2
    assert M.balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    assert M.accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(3 / 4)


def test_macro_f1():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # F1 = 2TP / (2TP + FP + FN): class 0 2/4, class 1 4/5, class 2 0/1
    assert M.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a listed class never seen nor predicted scores 0
    assert M.macro_f1(y_true, y_pred, labels=range(4)) == pytest.approx((0.5 + 0.8) / 4)


def test_expected_calibration_error():
    probs = np.array([[0.9, 0.1], [0.62, 0.38], [0.18, 0.82], [0.55, 0.45]])
    y = np.array([0, 1, 1, 1])  # right, wrong, right, wrong
    # 15 bins: each example alone in its bin -> mean |correct - confidence|
    assert M.expected_calibration_error(probs, y) == pytest.approx((0.1 + 0.62 + 0.18 + 0.55) / 4)
    # 2 bins: all in (0.5, 1]: accuracy 1/2, mean confidence 2.89 / 4
    assert M.expected_calibration_error(probs, y, n_bins=2) == pytest.approx(abs(0.5 - 2.89 / 4))
    assert M.expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0


def test_average_precision():
    # precision 1 at recall 1/2, 2/3 at recall 1
    assert M.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # tied scores enter together: (P 1/2, R 1/2), then (P 2/3, R 1)
    assert M.average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.25 + 1 / 3)
    assert math.isnan(M.average_precision([0, 0], [0.1, 0.2]))


def test_roc_auc():
    assert M.roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(3 / 4)  # 3 of 4 pairs ordered
    assert M.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts 1/2
    assert math.isnan(M.roc_auc([1, 1], [0.1, 0.2]))


def test_ranking_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.1).astype(int)
    scores = np.round(rng.random(500) + 0.5 * y, 2)  # rounding makes ties
    assert M.average_precision(y, scores) == pytest.approx(metrics.average_precision_score(y, scores))
    assert M.roc_auc(y, scores) == pytest.approx(metrics.roc_auc_score(y, scores))
    y3, pred3 = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert M.macro_f1(y3, pred3) == pytest.approx(metrics.f1_score(y3, pred3, average="macro"))
    assert M.balanced_accuracy(y3, pred3) == pytest.approx(metrics.balanced_accuracy_score(y3, pred3))


def test_t_interval():
    mean, low, high = M.t_interval([1.0, 2.0, 3.0])  # s = 1, t_(0.975, 2) = 4.3026527 (tables: 4.303)
    assert mean == 2.0 and high - mean == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert mean - low == pytest.approx(high - mean)
    mean, low, high = M.t_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)


def test_an_interval_stays_inside_its_metric_range():
    mean, low, high = M.t_interval([0.95, 0.99, 1.0], M.metric_range("roc_auc"))
    assert high == 1.0 and low == pytest.approx(mean - (M.t_interval([0.95, 0.99, 1.0])[2] - mean))
    _, low, _ = M.t_interval([0.01, 0.2, 0.02], M.metric_range("ece"))
    assert low == 0.0
    assert M.metric_range("loc_error") == (0.0, math.inf)
    results = {"runs": [{"loss": "ce", "metrics": {"roc_auc": v}} for v in (0.95, 0.99, 1.0)],
               "metrics": ["roc_auc"]}
    assert summarize(results)["ce"]["roc_auc"]["high"] == 1.0


# --- loss specs ------------------------------------------------------------------------------------

def test_parse_losses():
    specs = ex.parse_losses("ce,focal:gamma=1,poly1_focal:epsilon=2,gamma=1,polyn:epsilons=1/0.5,ghm_c")
    assert [s.name for s in specs] == ["cross_entropy", "focal_loss", "poly1_focal_loss",
                                       "polyn_cross_entropy", "ghm_c_loss"]
    assert specs[1].params == {"gamma": 1} and specs[2].params == {"epsilon": 2, "gamma": 1}
    assert specs[2].label == "poly1_focal:epsilon=2,gamma=1"
    assert specs[3].params == {"epsilons": (1.0, 0.5)}


@pytest.mark.parametrize("text, fragment", [
    ("ce,nope", "unknown loss 'nope'"),
    ("poly1:epsilon", "malformed parameter"),
    ("poly1:=2", "malformed parameter"),
    ("poly1:gama=2", "has no parameter 'gama'"),
    ("gamma=2,focal", "comes before any loss"),
    ("ce,ce", "twice"),
    ("dfl", "unknown loss"),
    ("distribution_focal_loss", "not a classification loss"),
    ("truncated", "cannot build"),
])
def test_parse_losses_errors(text, fragment):
    with pytest.raises(ValueError, match="--losses") as error:
        ex.parse_losses(text)
    assert fragment in str(error.value)


# --- the CLI end to end on tiny settings -----------------------------------------------------------

def _check_outputs(out, n_runs, metrics):
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == n_runs
    assert set(results["versions"]) >= {"python", "torch", "polyfocal"}
    assert results["metrics"] == metrics
    for run in results["runs"]:
        assert set(run["metrics"]) == set(metrics) and run["curves"]["epoch"]
    for loss in results["summary"].values():
        assert set(loss) == set(metrics)
    report = (out / "report.md").read_text()
    assert "| loss |" in report and "report.png" in report
    assert (out / "report.png").stat().st_size > 5000
    return results


def test_no_best_mark_where_the_best_interval_spans_the_whole_metric_range():
    """Two seeds that disagree wildly give accuracy [0, 1]: that says nothing, so no loss is starred."""
    from polyfocal.experiments.report import format_table

    def results(values):
        runs = [{"loss": loss, "seed": seed, "metrics": {"accuracy": value}}
                for loss, pair in values.items() for seed, value in enumerate(pair)]
        return {"metrics": ["accuracy"], "runs": runs}

    wild = format_table(results({"ce": (0.05, 0.99), "focal": (0.4, 0.41)}))
    assert summarize(results({"ce": (0.05, 0.99)}))["ce"]["accuracy"]["low"] == 0.0
    assert "*" not in wild
    clear = format_table(results({"ce": (0.80, 0.82), "focal": (0.4, 0.41)}))
    (ce_row,) = [line for line in clear.splitlines() if line.startswith("ce ")]
    assert clear.count("*") == 1 and ce_row.rstrip().endswith("*")


def test_one_table_model_renders_markdown_html_and_text():
    from polyfocal.experiments.tables import Table

    table = Table(["loss", "ece"], [["ce", "0.15"], ["a<b", "0.061"]])
    assert table.markdown() == "| loss | ece |\n|---|---|\n| ce | 0.15 |\n| a<b | 0.061 |"
    assert "<td>a&lt;b</td>" in table.html() and table.html().startswith("<table><thead><tr><th>loss</th>")
    assert table.text().splitlines() == ["loss  ece", "----  -----", "ce    0.15", "a<b   0.061"]


def test_compare_digits_lt(tmp_path, capsys):
    pytest.importorskip("sklearn")
    argv = ["compare", "--task", "digits-lt", "--losses", "ce,poly1:epsilon=2", "--seeds", "2", "--epochs", "2",
            "--imbalance", "10", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = _check_outputs(tmp_path, 4, ["balanced_accuracy", "accuracy", "macro_f1", "ece", "ece_ts", "nll",
                                           "head_accuracy", "middle_accuracy", "tail_accuracy"])
    assert results["config"]["task_options"]["imbalance"] == 10
    counts = results["task"]["train_class_counts"]
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1)
    out = capsys.readouterr().out
    assert "poly1:epsilon=2" in out and "balanced_accuracy" in out


def test_adafocal_learns_from_validation_held_out_for_every_loss(monkeypatch):
    """A comparison with AdaFocal holds out 20% of each class's training images, for all its losses
    alike, and AdaFocal's Module takes one step from the validation predictions after every epoch."""
    pytest.importorskip("sklearn")
    steps = []
    update = pf.AdaFocalLoss.update
    monkeypatch.setattr(pf.AdaFocalLoss, "update", lambda self, probs, labels: (steps.append(len(labels)),
                                                                                  update(self, probs, labels)))
    task = ex.make_task("digits-lt", imbalance=10)
    results = ex.compare(task, ex.parse_losses("ce,adafocal"), seeds=[0], epochs=3)
    held = task.with_validation(ex.train.VALIDATION_FRACTION)
    assert results["task"]["n_val"] == len(held.x_val) > 0 and results["task"]["n_train"] == len(held.x_train)
    assert steps == [len(held.x_val)] * 3
    with pytest.raises(ValueError, match="cannot hold out validation data"):
        held.with_validation(0.2)


def test_compare_tabular(tmp_path):
    pytest.importorskip("sklearn")
    argv = ["compare", "--task", "tabular-imbalanced", "--losses", "bce,sigmoid_focal,ce,ghm_c", "--seeds", "0,5",
            "--epochs", "1", "--n-train", "600", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = _check_outputs(tmp_path, 8, ["average_precision", "roc_auc"])
    assert results["config"]["seeds"] == [0, 5]


def test_compare_dense_toy(tmp_path):
    argv = ["compare", "--task", "dense-toy", "--losses", "bce,poly1_focal:epsilon=1,qfl,vfl", "--seeds", "2",
            "--epochs", "2", "--n-train", "16", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = _check_outputs(tmp_path, 8, ["map"])
    positives = sum(results["task"]["train_class_counts"][:3]) / sum(results["task"]["train_class_counts"])
    assert 0.002 < positives < 0.03


def test_dense_toy_is_learnable():
    task = ex.make_task("dense-toy", n_train=64)
    run = ex.train_run(task, ex.parse_losses("bce")[0], seed=0, epochs=6, batch_size=16)
    assert run["metrics"]["map"] > 0.3  # chance is about the positive rate, ~0.01


def test_dense_batches_are_normalised_by_their_positive_locations():
    task = ex.make_task("dense-toy", n_train=8)
    seen = []
    run = ex.train_run(task, ex.parse_losses("sigmoid_focal")[0], seed=0, epochs=1, batch_size=8,
                       on_batch=lambda logits, target: seen.append((logits, target)))
    (logits, labels), = seen
    positives = int((labels < 3).sum())
    assert 0 < positives < labels.numel() / 50  # far from the location count: the test can tell them apart
    want = pf.sigmoid_focal_loss(logits, labels, reduction="sum") / positives
    assert run["curves"]["train_loss"] == [pytest.approx(float(want), rel=1e-5)]


def test_determinism():
    task = ex.make_task("dense-toy", n_train=16)
    specs = ex.parse_losses("sigmoid_focal,ghm_c")
    first = ex.compare(task, specs, seeds=[0, 1], epochs=2)
    again = ex.compare(ex.make_task("dense-toy", n_train=16), specs, seeds=[0, 1], epochs=2)
    metrics = lambda results: [(r["loss"], r["seed"], r["metrics"], r["curves"]) for r in results["runs"]]  # noqa: E731
    assert metrics(first) == metrics(again)
    assert first["runs"][0]["metrics"] != first["runs"][1]["metrics"]  # the seed matters


def test_user_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    label = np.where(x[:, 0] + 0.3 * rng.normal(size=120) > 1.0, "fraud", "ok")
    path = tmp_path / "mine.csv"
    lines = ["a,kind,b,c"] + [f"{r[0]:.4f},{k},{r[1]:.4f},{r[2]:.4f}" for r, k in zip(x, label)]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["compare", "--data", str(path), "--label-column", "kind", "--losses", "bce,ce", "--seeds", "2",
            "--epochs", "3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    results = _check_outputs(out, 4, ["average_precision", "roc_auc"])
    assert results["task"]["options"]["classes"] == ["fraud", "ok"]  # sorted; the second is positive
    assert results["task"]["n_train"] + results["task"]["n_test"] == 120


def test_user_npz_multiclass(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(90, 4)) + y[:, None], y=y)
    task = ex.load_data(str(tmp_path / "d.npz"))
    assert task.kind == "multiclass" and task.num_classes == 3
    results = ex.compare(task, ex.parse_losses("ce,focal"), seeds=[0], epochs=2)
    assert set(results["runs"][0]["metrics"]) == {"balanced_accuracy", "accuracy", "macro_f1", "ece", "ece_ts", "nll"}


def _image_folder(root, per_class=12):
    """Three classes of 20x16 images: a bright left half, a bright top half, a bright square."""
    from PIL import Image

    rng = np.random.default_rng(2)
    masks = {"left": np.s_[:, :8], "top": np.s_[:10, :], "square": np.s_[5:15, 4:12]}
    for label, region in masks.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (20, 16, 3)).astype(np.uint8)
            pixels[region] += 120
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    (root / "left" / "notes.txt").write_text("not an image")
    return root


def test_user_image_folder(tmp_path, capsys):
    pytest.importorskip("PIL")
    folder = _image_folder(tmp_path / "shapes")
    task = ex.load_data(str(folder), image_size=8)
    assert task.kind == "multiclass" and task.options["classes"] == ["left", "square", "top"]
    assert task.x_train.shape[1] == 8 * 8 * 3 and len(task.x_train) + len(task.x_test) == 36
    out = tmp_path / "out"
    argv = ["compare", "--data", str(folder), "--image-size", "8", "--losses", "ce,focal", "--seeds", "1",
            "--epochs", "20", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    results = _check_outputs(out, 2, ["balanced_accuracy", "accuracy", "macro_f1", "ece", "ece_ts", "nll"])
    assert all(run["metrics"]["accuracy"] > 0.8 for run in results["runs"])  # chance is 1/3


def test_image_folder_errors(tmp_path, capsys):
    pytest.importorskip("PIL")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert main(["compare", "--data", str(tmp_path / "empty"), "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "no images in class subfolders" in capsys.readouterr().err
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.zeros((8, 2)), y=np.arange(8) % 2)
    assert main(["compare", "--data", str(npz), "--image-size", "8", "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert main(["compare", "--data", str(tmp_path / "empty"), "--image-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "expected a whole number >= 1; got '0'" in err


# --- bad input: clear errors naming the argument, exit code 2 ---------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["--task", "nope"], "--task"),
    (["--task", "dense-toy", "--losses", "ce,nope"], "--losses"),
    (["--task", "dense-toy", "--losses", "bce:gamma"], "--losses"),
    (["--task", "dense-toy", "--losses", "sigmoid_focal:gama=1"], "--losses"),
    (["--task", "dense-toy", "--losses", "ce"], "--losses"),  # softmax loss on a sigmoid task
    (["--task", "dense-toy", "--imbalance", "10"], "--imbalance"),
    (["--task", "dense-toy", "--seeds", "x"], "--seeds"),
    (["--losses", "ce"], "--task"),
    (["--data", "missing.csv"], "--data"),
    (["--data", "x.txt", "--task", "dense-toy"], "--task"),
])
def test_cli_errors(tmp_path, capsys, argv, fragment):
    assert main(["compare", *argv, "--epochs", "1", "--quiet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and ("error" in err)
    assert not (tmp_path / "results.json").exists()


def test_sigmoid_loss_on_multiclass_data(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(30, 2)), y=np.arange(30) % 3)
    task = ex.load_data(str(tmp_path / "d.npz"))
    with pytest.raises(ValueError, match="--losses.*sigmoid loss"):
        ex.compare(task, ex.parse_losses("bce"), seeds=[0], epochs=1)


def test_unknown_task_python_api():
    with pytest.raises(ValueError, match="--task.*unknown task 'nope'"):
        ex.make_task("nope")


# --- progress ------------------------------------------------------------------------------------

def test_progress_plain_lines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    ex.compare(ex.make_task("dense-toy", n_train=4), ex.parse_losses("bce"), seeds=[0, 1], epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "[1/2] bce seed 0: map=" in err and "[2/2] bce seed 1" in err


def test_progress_uses_tqdm_when_installed(monkeypatch):
    seen = []

    class FakeBar:
        def __init__(self, total, file):
            seen.append(("total", total))

        def set_postfix_str(self, text):
            seen.append(text)

        def update(self):
            pass

        def close(self):
            seen.append("closed")

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a bar only on a terminal
    ex.compare(ex.make_task("dense-toy", n_train=4), ex.parse_losses("bce"), seeds=[3], epochs=1, progress=True)
    assert seen[0] == ("total", 1) and seen[1].startswith("bce seed 3: map=") and seen[-1] == "closed"


def test_progress_is_plain_lines_in_a_log_even_with_tqdm(monkeypatch, capsys):
    """Redirected (a log, CI), a bar's carriage-return redraws would flood the file: one line per run."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    ex.compare(ex.make_task("dense-toy", n_train=4), ex.parse_losses("bce"), seeds=[0, 1], epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 2 and "[2/2] bce seed 1" in err


def test_compare_figure_is_a_readable_grid_of_dots_that_keeps_a_collapsed_seed_in_view():
    pytest.importorskip("matplotlib")
    from polyfocal.experiments.report import compare_figure, summarize

    metrics = ["balanced_accuracy", "accuracy", "macro_f1", "ece", "ece_ts", "nll"]
    runs = []
    for loss, level in (("ce", 0.90), ("focal", 0.91), ("poly1", 0.88)):
        for seed in range(3):
            value = 0.05 if (loss, seed) == ("poly1", 2) else level + 0.01 * seed  # one seed collapsed
            runs.append({"loss": loss, "seed": seed, "metrics": {m: value for m in metrics},
                         "curves": {"epoch": [1, 2], "train_loss": [1.0, 0.5], "test_balanced_accuracy": [0.5, value]}})
    results = {"metrics": metrics, "runs": runs, "primary": "balanced_accuracy",
               "config": {"task": "toy", "seeds": [0, 1, 2]}}
    fig = compare_figure(results, summarize(results))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(metrics) + 2
    assert fig.get_figwidth() <= 11 + 1e-9  # at most two panels a row, the HTML report's width at 100 dpi
    # losses of different formulas have no common scale: each training curve starts at 1
    assert {line.get_ydata()[0] for line in visible[len(metrics)].get_lines()} == {1.0}
    for ax, metric in zip(visible, metrics):
        assert not ax.patches, f"{metric}: bars (a zoomed axis would exaggerate them)"
        low, high = ax.get_ylim()
        assert low < 0.05 < high and low < 0.93 < high  # every seed in view, the collapsed one too


def test_a_training_curves_point_computes_the_headline_metric_alone():
    from polyfocal.experiments.tasks import make_task

    task = make_task("digits-lt", imbalance=10)
    logits = torch.randn(len(task.y_test), task.num_classes, generator=torch.Generator().manual_seed(0))
    full = task.evaluate(logits, "softmax")
    assert set(full) == set(task.metrics)
    assert task.evaluate(logits, "softmax", primary_only=True) == {task.primary: full[task.primary]}
