"""``polyfocal explain ...``: files written, exit codes, errors."""

import subprocess
import sys

import pytest

from polyfocal.cli import build_parser, main

pytest.importorskip("matplotlib")


def _pngs(path):
    files = sorted(p.name for p in path.iterdir() if p.suffix == ".png")
    for name in files:
        assert (path / name).stat().st_size > 1000
    return files


def test_coefficients(tmp_path, capsys):
    assert main(["explain", "coefficients", "--loss", "focal_loss", "--gamma", "2", "--out", str(tmp_path)]) == 0
    assert _pngs(tmp_path) == ["coefficients.png"]
    out = capsys.readouterr().out
    assert "focal_loss(gamma=2)" in out and "1(1-p)^3" in out


def test_coefficients_aliases_and_several_losses(tmp_path):
    argv = ["explain", "coefficients", "--loss", "focal,poly1,polyn,poly,truncated", "--gamma", "1",
            "--epsilon", "2", "--epsilons", "1,0.5", "--coefficients", "2,1", "--tail", "drop",
            "--cutoff", "3", "--n-terms", "6", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert _pngs(tmp_path) == ["coefficients.png"]


def test_curves(tmp_path, capsys):
    out_dir = tmp_path / "new" / "dir"
    argv = ["explain", "curves", "--losses", "cross_entropy,focal_loss,poly1_cross_entropy,bce,qfl,truncated",
            "--out", str(out_dir)]
    assert main(argv) == 0
    assert _pngs(out_dir) == ["curves.png", "curves_margin.png"]
    out = capsys.readouterr().out
    assert "cross_entropy: 2.3026/10.0000" in out  # -log 0.1 and 1 / 0.1
    assert "truncated_cross_entropy(n_terms=5)" in out


def test_truncation(tmp_path, capsys):
    assert main(["explain", "truncation", "--delta", "0.05", "--zeta", "1e-4", "--out", str(tmp_path)]) == 0
    assert _pngs(tmp_path) == ["truncation.png"]
    out = capsys.readouterr().out
    assert "Theorem 1 bound" in out and "= 237.97" in out and "= 238" in out  # log(5e-6) / log(0.95)


def test_density(tmp_path, capsys):
    argv = ["explain", "density", "--n", "5000", "--bins", "20", "--ghm-bins", "10", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert _pngs(tmp_path) == ["density.png"]
    assert "lowest g bin" in capsys.readouterr().out


def test_share(tmp_path, capsys):
    argv = ["explain", "share", "--losses", "ce,poly1", "--epsilon", "2", "--steps", "15", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert _pngs(tmp_path) == ["share.png"]
    assert "poly1_cross_entropy(epsilon=2)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["explain", "coefficients", "--loss", "nope"], "--loss"),
    (["explain", "coefficients", "--loss", "qfl"], "no polynomial expansion"),
    (["explain", "coefficients", "--n-terms", "0"], "argument --n-terms: expected a whole number >= 1"),
    (["explain", "curves", "--losses", "ce", "--gamma", "2"], "--gamma does not apply"),
    (["explain", "curves", "--losses", "focal", "--gamma", "-1"], "`gamma`"),
    (["explain", "truncation", "--zeta", "0"], "argument --zeta: expected a number > 0"),
    (["explain", "truncation", "--delta", "1.5"], "`delta`"),
])
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polyfocal: error:") and message in err
    assert _pngs(tmp_path) == []


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["explain"]) == 2
    assert main(["explain", "colours"]) == 2
    assert main(["--help"]) == 0
    assert main(["explain", "curves", "--help"]) == 0
    assert "--losses" in capsys.readouterr().out


def test_parser_takes_new_commands():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert "explain" in commands.choices
    commands.add_parser("probe")  # later commands plug into the same subparsers object
    assert parser.parse_args(["probe"]).command == "probe"


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "polyfocal", "explain", "truncation", "--delta", "0.2",
                             "--zeta", "1e-3", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "smallest N found numerically" in result.stdout
    assert _pngs(tmp_path) == ["truncation.png"]


def test_calibration_on_synthetic_and_on_given_predictions(tmp_path, capsys):
    pytest.importorskip("torchmetrics")
    import torch

    assert main(["explain", "calibration", "--n", "4000", "--out", str(tmp_path / "demo")]) == 0
    assert _pngs(tmp_path / "demo") == ["calibration_losses.png", "focal_bound.png", "reliability.png"]
    out = capsys.readouterr().out
    fitted = float(out.split("temperature fitted on the even rows: ")[1].split(";")[0])
    assert 2.0 < fitted < 3.0  # the synthetic logits are over-confident by 2.5
    rows = {line.split()[0]: [float(v) for v in line.split()[-6:]] for line in out.splitlines()
            if line.strip().startswith(("as", "temperature "))}
    assert rows["temperature"][0] < rows["as"][0] / 2  # ECE falls after temperature scaling
    gammas = [float(v) for v in out.split("inverse form):\n")[1].splitlines()[0].split()]
    assert len(gammas) == 15 and min(gammas) > 1  # over-confident in every bin: AdaFocal's gamma rises from 1
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 4, generator=g)
    torch.save({"logits": logits, "labels": logits.argmax(1)}, tmp_path / "mine.pt")
    assert main(["explain", "calibration", "--predictions", str(tmp_path / "mine.pt"), "--bins", "10",
                 "--out", str(tmp_path / "mine")]) == 0
    assert "mine.pt; temperature fitted" in capsys.readouterr().out
