"""Every user mistake on the command line ends in one line ``polyfocal: error: ...`` and exit code 2,
before any work starts (no training, no files written), never in a traceback."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from polyfocal.cli import main

NO_TRAINING = ["--seeds", "1", "--quiet"]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working directory with a plain file, an empty CSV and an image folder with one corrupt file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "notnpz.npz").write_text("not an archive")
    torch.save({"logits": torch.randn(4, 3)}, tmp_path / "nolabels.pt")
    torch.save({"logits": torch.randn(4, 3), "labels": torch.tensor([0, 1, 5, 2])}, tmp_path / "badlabels.pt")
    image = pytest.importorskip("PIL.Image")
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
            image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    (tmp_path / "images" / "dog" / "broken.png").write_text("not a png")
    return tmp_path


MISTAKES = [
    (["compare", "--task", "digits-lt", "--batch-size", "0"], "--batch-size: expected a whole number >= 1; got '0'"),
    (["compare", "--task", "digits-lt", "--threads", "-3"], "--threads: expected a whole number >= 1; got '-3'"),
    (["compare", "--task", "digits-lt", "--threads", "0"], "--threads"),
    (["compare", "--task", "tabular-imbalanced", "--n-train", "-5"], "--n-train"),
    (["compare", "--task", "tabular-imbalanced", "--n-train", "0"], "--n-train"),
    (["compare", "--task", "digits-lt", "--epochs", "0"], "--epochs"),
    (["compare", "--task", "digits-lt", "--lr", "-1"], "--lr: expected a number > 0; got '-1'"),
    (["compare", "--task", "digits-lt", "--imbalance", "0.5"], "--imbalance: expected a number >= 1"),
    (["compare", "--task", "digits-lt", "--out", "afile"], "--out: expected a directory; 'afile' is a file"),
    (["compare", "--task", "digits-lt", "--out", "afile/runs"], "--out: cannot make directory 'afile/runs'"),
    (["compare", "--task", "digits-lt", "--out", "/proc/forbidden/out"],  # names the folder that can't be made
     "--out: cannot make directory '/proc/forbidden' (for '/proc/forbidden/out'): No such file or directory"),
    (["reproduce", "--out", "/proc/forbidden"], "--out: cannot make directory '/proc/forbidden' (for '/proc/forbidden')"),
    (["compare", "--data", "empty.csv"], "`--data` 'empty.csv' is empty"),
    (["compare", "--data", "images", "--epochs", "1"], "broken.png' cannot be read"),
    (["compare", "--task", "digits-lt", "--bogus"], "unrecognized arguments: --bogus (see `polyfocal compare --help`)"),
    (["explain", "share", "--steps", "0"], "--steps: expected a whole number >= 1"),
    (["explain", "curves", "--out", "afile"], "--out: expected a directory"),
    (["explain", "truncation", "--delta", "-0.1"], "--delta: expected a number > 0"),
    (["explain", "density", "--bins", "0"], "--bins"),
    (["explain", "curves", "--losses", "flsd", "--gamma-schedule", "0.2:5:1"],
     "--gamma-schedule: expected BOUND:GAMMA pairs, e.g. 0.2:5,1:3; got '0.2:5:1'"),
    (["explain", "curves", "--losses", "flsd", "--gamma-schedule", "0.2:5,0.9:3"],
     "`gamma_schedule`'s bounds must increase in p_t and end at 1.0"),
    (["explain", "calibration", "--overconfidence", "0.5"], "--overconfidence: expected a number >= 1"),
    (["explain", "calibration", "--predictions", "notnpz.npz"], "--predictions 'notnpz.npz': cannot read it"),
    (["explain", "calibration", "--predictions", "nolabels.pt"], "must hold a dict with 'logits' (N, C) and 'labels'"),
    (["explain", "calibration", "--predictions", "badlabels.pt"], "`labels` must lie in [0, 2]"),
    (["sweep", "--task", "digits-lt", "--loss", "focal", "--param", "gamma=0:1", "--trials", "0"], "--trials"),
    (["sweep", "--task", "digits-lt", "--loss", "focal", "--param", "gamma=0:1", "--out", "afile"], "--out"),
    (["reproduce", "--out", "afile"], "--out: expected a directory"),
    (["reproduce", "--threads", "0"], "--threads"),
    (["compare", "--task", "tabular-imbalanced", "--n-train", "2"], "`--n-train` must be >= 200 for task"),
    (["compare", "--task", "dense-toy", "--losses", "bce", "--n-train", "1"], "`--n-train` must be >= 4"),
    (["compare", "--task", "digits-lt", "--data-seed", "-1"], "--data-seed: expected a whole number >= 0"),
    (["compare", "--task", "digits-lt", "--seeds", "0,0"], "seeds must differ"),
    (["compare", "--data", "notnpz.npz"], "cannot be read as .npz"),
    (["compare", "--task", "digits-lt", "--losses", "ce,focal:gamma=-1"], "`gamma` must be in [0.0, inf]; got -1.0"),
    (["compare", "--task", "digits-lt", "--losses", "focal:alpha=-1"], "(None turns it off)"),
    (["sweep", "--task", "digits-lt", "--loss", "focal", "--param", "gamma=-2:4"],
     "cannot build 'focal_loss:gamma=-2.0': `gamma` must be in [0.0, inf]"),
    (["sweep", "--task", "digits-lt", "--loss", "sigmoid_focal", "--param", "alpha=0:2"],
     "`alpha` must be in [0.0, 1.0]"),
]


@pytest.mark.parametrize("argv, message", MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_mistake_is_one_error_line_and_exit_2(place, capsys, argv, message):
    before = sorted(p.name for p in place.rglob("*"))
    assert main(argv + (NO_TRAINING if argv[0] == "compare" and "--seeds" not in argv else [])) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polyfocal: error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert sorted(p.name for p in place.rglob("*")) == before  # no work done, nothing written


def test_a_mistake_in_a_subprocess_prints_no_traceback(place):
    result = subprocess.run([sys.executable, "-m", "polyfocal", "compare", "--task", "digits-lt", "--batch-size", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "polyfocal: error: argument --batch-size: expected a whole number >= 1; got '0' "
        "(see `polyfocal compare --help`)"]


SWEEP = ["sweep", "--task", "digits-lt", "--loss", "focal", "--param", "gamma=0:1", "--storage"]


@pytest.mark.parametrize("url, message", [
    ("bogus://x", "unknown database 'bogus' in bogus://x"),
    ("runs/x.db", "expected a database URL such as sqlite:///runs/sweep.db"),
    ("sqlite:///missing/x.db", "the directory of 'sqlite:///missing/x.db' does not exist"),
    ("journal:", "expected journal:PATH with PATH a file in an existing directory; got 'journal:'"),
    ("journal:missing/x.log", "expected journal:PATH with PATH a file in an existing directory"),
])
def test_a_storage_mistake_is_named_before_any_trial(place, capsys, url, message):
    assert main(SWEEP + [url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (place / "polyfocal.db").exists()


@pytest.mark.parametrize("url, package", [("postgresql+psycopg2://me:secret@localhost/db", "psycopg2-binary"),
                                          ("mysql://me:secret@localhost/db", "mysqlclient"),
                                          ("mysql+pymysql://me:secret@localhost/db", "pymysql")])
def test_a_missing_database_driver_gets_its_install_hint_and_no_password(place, capsys, url, package):
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect().import_dbapi()
        pytest.skip(f"the driver of {url} is installed here")
    except ImportError:
        pass
    assert main(SWEEP + [url]) == 2
    err = capsys.readouterr().err
    assert f"pip install {package}" in err and "secret" not in err and "me:***@" in err


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (pgserver's binaries) on a Unix socket, with a password-checked role."""
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")  # SQLAlchemy's driver for postgresql:// (from 2.1)
    folder = tmp_path_factory.mktemp("postgres")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    server.psql("create role me login password 'right' createdb; create database sweeps owner me;")
    (folder / "pg_hba.conf").write_text("local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
    server.psql("select pg_reload_conf();")
    yield server.get_uri().split("host=")[1]
    server.cleanup()


def _postgres_error(capsys, url):
    start = time.monotonic()
    assert main(SWEEP + [url, "--trials", "1", "--epochs", "1", *NO_TRAINING]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("polyfocal: error: ") and "Traceback" not in err, err
    assert time.monotonic() - start < 20, "no retries for what retrying cannot cure"
    return err


def test_a_wrong_postgres_password_is_one_line_with_the_password_masked(place, capsys, postgres):
    err = _postgres_error(capsys, f"postgresql://me:wrong@/sweeps?host={postgres}")
    assert "password authentication failed" in err and "wrong" not in err and "me:***@" in err


def test_a_refused_postgres_port_is_one_line(place, capsys, postgres):
    err = _postgres_error(capsys, "postgresql://me:right@127.0.0.1:9/sweeps")
    assert "refused" in err and "right" not in err


def test_a_sweep_runs_on_postgres(place, capsys, postgres):
    assert main(SWEEP + [f"postgresql://me:right@/sweeps?host={postgres}", "--trials", "1", "--epochs", "1",
                         *NO_TRAINING, "--out", str(place / "pg")]) == 0
    assert "1 completed trial" in capsys.readouterr().out


def test_an_unknown_loss_suggests_close_names_in_one_short_line(capsys):
    assert main(["explain", "curves", "--losses", "focall"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 250, err  # not every name: there are 20
    assert "did you mean 'focal' or 'focal_loss'" in err


def test_help_gives_the_defaults_and_names_every_finding(capsys):
    for argv in (["compare", "--help"], ["reproduce", "--help"]):
        assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 3)" in out and "(default: compare-out)" in out and "GFL" in out


def test_a_bug_is_not_taken_for_a_usage_error(monkeypatch):
    """A ValueError that is not a user's mistake (here from inside a command) keeps its traceback."""
    from polyfocal import analysis

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(analysis, "terms_needed", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["explain", "truncation"])
