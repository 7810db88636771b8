"""``polyfocal reproduce``: verdicts on hand-made intervals, the report files, the CLI."""

import base64
import html
import json
import math
import os
import re
import shutil
import subprocess

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from figure_checks import assert_legible  # noqa: E402
from polyfocal.cli import main  # noqa: E402
from polyfocal.experiments import reproduce as R  # noqa: E402
from polyfocal.experiments.figures import DPI, TEXT_PT  # noqa: E402
from polyfocal.experiments.verdicts import Outcome, Verdict, Verdicts  # noqa: E402

NAN = math.nan


# --- verdicts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("low, high, claim, expected", [
    (0.01, 0.05, "greater", "reproduced"),
    (-0.05, -0.01, "greater", "not reproduced"),
    (-0.01, 0.05, "greater", "inconclusive: the interval includes 0"),
    (-0.05, -0.01, "less", "reproduced"),
    (0.01, 0.05, "less", "not reproduced"),
    (-0.02, 0.02, "less", "inconclusive: the interval includes 0"),
    (NAN, NAN, "greater", "inconclusive: no interval (need at least 2 seeds)"),
])
def test_verdict(low, high, claim, expected):
    assert str(R.verdict(low, high, claim)) == expected


def test_verdict_not_worse_uses_the_margin():
    assert R.verdict(-0.005, 0.03, "not_worse", 0.01).outcome is Outcome.REPRODUCED  # within the margin
    assert R.verdict(-0.05, -0.02, "not_worse", 0.01).outcome is Outcome.NOT_REPRODUCED  # clearly worse
    assert R.verdict(-0.05, 0.02, "not_worse", 0.01) == Verdict(Outcome.INCONCLUSIVE,
                                                                 "the interval reaches below -0.01 but includes 0")
    with pytest.raises(ValueError, match="`claim`"):
        R.verdict(0.0, 1.0, "bigger")


def _d(low, high):
    return {"low": low, "high": high}


def test_truncation_verdict():
    ns = [1, 2, 5, 20, 100]
    short = _d(-0.2, -0.05)

    def text(diffs):
        return str(R.truncation_verdict(ns, diffs))

    assert text([short, short, short, _d(-0.01, 0.02), _d(-0.01, 0.01)]) == \
        "reproduced: every N below 10 falls short of cross-entropy; N=20 matches it (within 0.02)"
    assert text([short] * 5).startswith("reproduced: every N below 10 falls short")
    assert text([short, _d(-0.01, 0.01)] + [_d(-0.01, 0.01)] * 3) == \
        "not reproduced: N=2 terms already match cross-entropy (within 0.02)"
    assert text([short, short, _d(-0.1, 0.01), short, short]).startswith("inconclusive: N=5")
    assert text([_d(NAN, NAN)] * 5).startswith("inconclusive: no interval")


def test_truncation_rows_use_the_headlines_words():
    """Each N's row says what the headline says of it: a headline 'N=20 matches it' has N=20's row
    'matches' too, never the interval's 'inconclusive' of a claim the finding does not make."""
    ns = [1, 5, 20, 100]
    diffs = [_d(-0.2, -0.05), _d(-0.01, 0.01), _d(-0.01, 0.02), _d(-0.2, -0.05)]
    rows = [str(v) for v in R.truncation_rows(ns, diffs)]
    assert rows == ["reproduced: falls short of cross-entropy",
                    "not reproduced: matches cross-entropy (within 0.02)",
                    "reproduced: matches cross-entropy (within 0.02)",
                    "inconclusive: falls short of cross-entropy"]
    headline = str(R.truncation_verdict([1, 20], [diffs[0], diffs[2]]))
    assert headline.endswith("N=20 matches it (within 0.02)") and "matches cross-entropy" in rows[2]


def test_positive_loss_rises_for_negative_epsilon():
    # FL + eps (1-p)^3 with alpha = 0.25 on positives: d/dp = -0.25 d/dp[(1-p)^2 log p] - 3 eps (1-p)^2 > 0
    # for eps = -1 once p passes ~0.136; for eps >= 0 the loss falls everywhere
    low, high = R.positive_loss_rises(-1.0)
    assert low == pytest.approx(0.136, abs=0.005) and high > 0.99
    assert R.positive_loss_rises(0.0) is None and R.positive_loss_rises(1.0) is None


def test_verdicts_of_several_claims_agree_or_are_inconclusive():
    yes, no, unclear = Verdict(Outcome.REPRODUCED), Verdict(Outcome.NOT_REPRODUCED), R.verdict(-0.1, 0.1)
    assert Verdicts((("a", yes), ("b", yes))).outcome is Outcome.REPRODUCED
    assert Verdicts((("a", yes), ("b", no))).outcome is Outcome.INCONCLUSIVE
    assert str(Verdicts((("a", yes), ("b", unclear)))) == "a: reproduced; b: inconclusive: the interval includes 0"
    assert R.any_of([("epsilon=1", yes), ("epsilon=-1", no)], "epsilon").outcome is Outcome.REPRODUCED
    assert R.any_of([("epsilon=1", no), ("epsilon=-1", no)], "epsilon").outcome is Outcome.NOT_REPRODUCED
    assert str(R.any_of([], "epsilon")) == "inconclusive: no epsilon run"
    assert {o: R.CSS_CLASS[o] for o in Outcome} == {Outcome.REPRODUCED: "reproduced", Outcome.NOT_REPRODUCED: "not",
                                                    Outcome.INCONCLUSIVE: "inconclusive", Outcome.NOT_RUN: "pending",
                                                    Outcome.NOT_FINISHED: "pending"}


def test_paired_difference_pairs_runs_by_seed():
    runs = [{"loss": "a", "seed": s, "metrics": {"m": v}} for s, v in [(0, 0.5), (1, 0.7), (2, 0.6)]]
    runs += [{"loss": "b", "seed": s, "metrics": {"m": v}} for s, v in [(2, 0.5), (0, 0.4), (1, 0.6)]]
    d = R.paired_difference({"runs": runs}, "a", "b", "m")
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.1)
    assert d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)  # identical differences


# --- the report and the command ---------------------------------------------------------------------

TINY = dict(n_terms=(1, 5), epsilons=(0.0, 2.0), poly1_focal_epsilons=(-1.0,), digits_epochs=1, dense_epochs=1,
            segmentation_epochs=1,
            dense_n_train=8, gfl_ablation=True)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    results = R.reproduce_findings(R.ReproduceConfig(seeds=[0, 1], **TINY))
    return R.write_reproduce_report(results, str(out)), results


def test_report_files(tiny_report):
    paths, results = tiny_report
    assert set(results["findings"]) == set(R.FINDINGS)
    gfl = results["findings"]["qfl_dfl"]
    assert gfl.metric == "map_box" and gfl.verdict.outcome is not Outcome.NOT_RUN
    calibration = results["findings"]["calibration"]
    assert [d["metric"] for d in calibration.differences] == ["ece", "ece_ts", "accuracy"] * 2
    assert [d["a"] for d in calibration.differences] == ["flsd"] * 3 + ["adafocal"] * 3
    assert [label for label, _ in calibration.verdict.parts] == [
        f"{name} {claim}" for name in ("FLSD-53", "AdaFocal")
        for claim in ("ECE lower", "ECE lower after temperature scaling", "accuracy no worse")]
    assert all(v.outcome is not Outcome.NOT_RUN for _, v in calibration.verdict.parts)
    assert {r["loss"] for r in gfl.results["runs"]} == {"sigmoid_focal+l1", "qfl+dfl", "qfl+l1", "sigmoid_focal+dfl"}
    assert [d["metric"] for d in gfl.differences] == ["map_box"] * 3 + ["loc_error", "map"]
    assert results["findings"]["poly1_focal"].notes  # epsilon = -1 with alpha = 0.25 is not monotone
    text = open(paths["markdown"]).read()
    for title in R.FINDINGS.values():
        assert f"## {title}" in text
    assert text.count("**Verdict: ") == len(R.FINDINGS)
    assert "**Paper's claim.**" in text and "mean [95% interval]" in text
    for key in R.FINDINGS:
        assert open(paths[f"png_{key}"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"![{key}]({key}.png)" in text
    assert "| qfl+dfl - sigmoid_focal+l1 (loc_error) |" in text and "loc_error mean [95% interval]" in text


def test_every_verdict_states_its_numbers(tiny_report):
    paths, results = tiny_report
    verdicts = [line for line in open(paths["markdown"]).read().splitlines() if line.startswith("**Verdict: ")]
    assert len(verdicts) == len(R.FINDINGS)
    for line in verdicts:
        assert re.search(r" - .+: -?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\] \w+", line), line
    summary = [line for line in open(paths["markdown"]).read().splitlines() if line.startswith("| ") and
               any(line.startswith(f"| {title} |") for title in R.FINDINGS.values())]
    assert len(summary) == len(R.FINDINGS) and all("[" in line for line in summary)  # the overview too


def test_each_metric_of_a_finding_gets_its_own_difference_axis(tiny_report):
    """GFL's finding compares mAP and the edge error in pixels: never on one axis."""
    _, results = tiny_report
    fig = R.finding_figure("qfl_dfl", results["findings"]["qfl_dfl"])
    labels = [ax.get_xlabel() for ax in fig.axes[1:]]
    assert labels == [f"paired difference in {m} (95% interval)" for m in ("map_box", "loc_error", "map")]


@pytest.mark.parametrize("key", list(R.FINDINGS))
def test_every_finding_figure_is_legible(tiny_report, key):
    """At the report's width, full-size text, no overlapping tick labels, every axis labelled."""
    _, results = tiny_report
    assert_legible(R.finding_figure(key, results["findings"][key]))


def test_a_finding_of_several_claims_shows_every_claims_numbers_in_its_summary_row(tiny_report):
    paths, results = tiny_report
    finding = results["findings"]["calibration"]
    metrics = {d["metric"] for d in finding.differences}
    assert len(metrics) > 1
    row = next(line for line in open(paths["markdown"]).read().splitlines()
               if line.startswith(f"| {R.FINDINGS['calibration']} |"))
    assert all(f"] {metric}" in row for metric in metrics), row


def test_the_headline_and_the_rows_use_one_vocabulary(tiny_report):
    """Finding 1's rows say 'falls short' or 'matches' as its headline does, not a claim's bare verdict."""
    _, results = tiny_report
    finding = results["findings"]["truncation"]
    for d in finding.differences:
        assert "cross-entropy" in str(d["verdict"]) or "no interval" in str(d["verdict"]), d["verdict"]


MEASURE = """<pre id='measure'></pre><script>
const images = [...document.images].map(i => ({natural: i.naturalWidth, shown: i.getBoundingClientRect().width}));
const body = parseFloat(getComputedStyle(document.body).fontSize);
document.getElementById('measure').textContent = JSON.stringify({images, body, page: document.body.scrollWidth});
</script>"""


def test_the_report_is_legible_in_a_browser_at_1280_px(tiny_report, tmp_path):
    """Headless Chromium shows the report at 1280 px: every figure unscaled, its text (TEXT_PT at DPI) at
    least the body text's size, nothing wider than the window. A screenshot is left for a look."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium for this test (.ci/run)")
        pytest.skip("no chromium here (apt-get install chromium)")
    paths, _ = tiny_report
    page = tmp_path / "measured.html"
    page.write_text(open(paths["html"]).read().replace("</body>", MEASURE + "</body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,900", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    measured = json.loads(html.unescape(re.search(r"<pre id=\"measure\">(.*?)</pre>", dom, re.S).group(1)))
    assert len(measured["images"]) == len(R.FINDINGS) and measured["page"] <= 1280
    for image in measured["images"]:
        scale = image["shown"] / image["natural"]
        assert scale >= 0.99, image  # not shrunk to fit
        assert TEXT_PT * DPI / 72 * scale >= measured["body"], (image, measured["body"])
    subprocess.run([*flags, f"--screenshot={tmp_path / 'report.png'}", page.as_uri()], capture_output=True, timeout=120)


def test_html_is_self_contained(tiny_report):
    paths, _ = tiny_report
    page = open(paths["html"]).read()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>") and "<style>" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == len(R.FINDINGS)
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert ".png'" not in page and 'src="' not in page  # no links to files next to it


def test_results_json(tiny_report):
    paths, _ = tiny_report
    data = json.load(open(paths["json"]))
    assert data["config"]["seeds"] == [0, 1]
    truncation = data["findings"]["truncation"]
    assert {r["loss"] for r in truncation["results"]["runs"]} == {"ce", "truncated:n_terms=1",
                                                                  "truncated:n_terms=5"}
    assert truncation["task"]["name"] == "digits-lt"
    shares = data["findings"]["poly1_epsilon"]["extra"]["shares"]["poly1:epsilon=0"]
    assert len(shares) == 2 and all(0 <= v <= 1 for v in shares[0])
    # verdicts as data: an outcome beside the text, and each part of a finding with several claims
    assert truncation["verdict"]["outcome"] in {o.value for o in Outcome}
    assert truncation["verdict"]["text"].startswith(truncation["verdict"]["outcome"])
    assert [p["label"] for p in data["findings"]["poly1_epsilon"]["verdict"]["parts"]] == [
        "epsilon=2 vs 0", "gradient share > 0.5 in the last epoch"]
    assert all("outcome" in d["verdict"] for d in truncation["differences"])


def test_cli_writes_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(R.ReproduceConfig, "quick", classmethod(lambda cls, seeds=5: cls(**TINY)))
    out = tmp_path / "out"
    assert main(["reproduce", "--quick", "--seeds", "2", "--quiet", "--out", str(out)]) == 0
    for name in ("report.md", "report.html", "results.json", "truncation.png"):
        assert (out / name).is_file()
    assert json.load(open(out / "results.json"))["config"]["seeds"] == [0, 1]
    printed = capsys.readouterr().out
    assert "6. QFL + DFL" in printed and "wrote" in printed


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1"], "at least 2 seeds"),
    (["--seeds", "many"], "number of seeds"),
    (["--fast"], "unrecognized arguments"),
])
def test_cli_bad_flags_exit_2(argv, message, capsys):
    assert main(["reproduce", *argv]) == 2
    assert message in capsys.readouterr().err
