"""Ctrl-C in the command line: one line, exit 130, no traceback; ``compare`` and ``reproduce`` write what
finished (and say where), never over an earlier run's results. A real subprocess gets a real SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

#: reproduce with tiny settings, as tests/test_reproduce.py runs it
TINY_REPRODUCE = textwrap.dedent("""
    import sys
    from polyfocal.experiments import reproduce as R
    tiny = dict(n_terms=(1, 5), epsilons=(0.0, 2.0), poly1_focal_epsilons=(-1.0,), digits_epochs=1, dense_epochs=1,
                dense_n_train=8)
    R.ReproduceConfig.quick = classmethod(lambda cls, seeds=5: cls(**tiny))
    from polyfocal.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def interrupt(argv: list[str], after: str, cwd) -> tuple[int, list[str]]:
    """Run the command line, send SIGINT once a line of standard error contains ``after``; its exit code and
    standard error's lines."""
    process = subprocess.Popen([sys.executable, "-c", TINY_REPRODUCE, *argv], cwd=cwd, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    lines = []
    try:
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if after in line:
                process.send_signal(signal.SIGINT)
                break
        lines += process.stderr.read().splitlines()
        return process.wait(timeout=300), lines
    finally:
        process.kill()


def test_an_interrupted_compare_writes_the_runs_that_finished_beside_an_earlier_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("an earlier run's results")
    code, lines = interrupt(["compare", "--task", "digits-lt", "--losses", "ce,focal", "--seeds", "3",
                             "--epochs", "2", "--out", str(out)], after="[1/6]", cwd=tmp_path)
    assert code == 130, lines
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1] == f"polyfocal: interrupted; the runs that finished are in {out / 'interrupted-1'}"
    assert (out / "results.json").read_text() == "an earlier run's results"
    results = json.loads((out / "interrupted-1" / "results.json").read_text())
    assert results["runs"] and results["unfinished"]
    finished = {f"{run['loss']} seed {run['seed']}" for run in results["runs"]}
    assert finished | set(results["unfinished"]) == {f"{loss} seed {seed}" for loss in ("ce", "focal")
                                                    for seed in range(3)}
    assert "**Interrupted:** not finished: " in (out / "interrupted-1" / "report.md").read_text()


def test_an_interrupted_reproduce_writes_the_findings_that_finished(tmp_path):
    out = tmp_path / "fresh"
    code, lines = interrupt(["reproduce", "--quick", "--seeds", "2", "--out", str(out)], after="finding 2", cwd=tmp_path)
    assert code == 130, lines
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1] == f"polyfocal: interrupted; the findings that finished are in {out}"
    findings = json.loads((out / "results.json").read_text())["findings"]
    assert findings["truncation"]["verdict"]["outcome"] not in ("not finished (interrupted)", "not run yet")
    assert findings["poly1_epsilon"]["verdict"]["outcome"] == "not finished (interrupted)"
    assert "not finished (interrupted)" in (out / "report.html").read_text()


def test_an_interrupt_before_anything_finished_is_one_line(tmp_path):
    out = tmp_path / "none"
    code, lines = interrupt(["reproduce", "--quick", "--seeds", "2", "--out", str(out)], after="finding 1",
                            cwd=tmp_path)
    assert code == 130
    assert lines[-1] == "polyfocal: interrupted", lines
    assert not any("Traceback" in line for line in lines), lines
    assert not out.exists()


def test_an_interrupted_sweep_is_one_line_and_keeps_its_trials(tmp_path):
    """Optuna logs a trial stopped by Ctrl-C as failed, with its traceback, unless told not to."""
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    code, lines = interrupt(["sweep", "--task", "digits-lt", "--loss", "focal", "--param", "gamma=0:2", "--trials", "50",
                             "--epochs", "20", "--storage", storage, "--out", str(tmp_path / "out")],
                            after="[trial 0]", cwd=tmp_path)
    assert code == 130, lines
    assert lines[-1] == f"polyfocal: interrupted; the finished trials are in {storage} (run the same command to go on)"
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines), lines
