"""``polyfocal sweep``: output files, resume, a killed worker, two workers on one study, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from polyfocal.cli import main

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")
from optuna.trial import TrialState  # noqa: E402

from polyfocal.experiments import liveness  # noqa: E402 (needs optuna)


def _url(db) -> str:
    """A ``.journal`` file is a journal storage, anything else SQLite."""
    return f"journal:{db}" if str(db).endswith(".journal") else f"sqlite:///{db}"


def _storage(db):
    if str(db).endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(db)))
    return _url(db)


def _argv(db, *extra, trials=2, epochs="1"):
    return ["sweep", "--task", "digits-lt", "--loss", "poly1", "--param", "epsilon=-1:4",
            "--trials", str(trials), "--epochs", epochs, "--storage", _url(db), "--study", "s",
            "--heartbeat", "1", "--quiet", *extra]


def _spawn(db, out, trials, epochs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "polyfocal", *_argv(db, "--out", str(out), trials=trials,
                                                                       epochs=epochs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete(db):
    try:
        study = optuna.load_study(study_name="s", storage=_storage(db))
    except Exception:  # not created yet
        return []
    return study.get_trials(states=(TrialState.COMPLETE,))


def _key(trials):
    return [(t.number, t.params["epsilon"], t.value) for t in trials]


def test_sweep_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(tmp_path / "a.db", "--param", "label_smoothing=0,0.1", "--out", str(out), trials=3)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best: " in printed and "balanced_accuracy" in printed
    results = json.loads((out / "results.json").read_text())
    assert (out / "sweep.png").stat().st_size > 1000
    assert len(results["trials"]) == 3 and results["primary"] == "balanced_accuracy"
    best = results["best"]["params"]
    assert -1 <= best["epsilon"] <= 4 and best["label_smoothing"] in (0, 0.1)
    assert results["best"]["value"] == max(t["value"] for t in results["trials"])
    for trial in results["trials"]:
        assert set(trial["metrics"]) == {"balanced_accuracy", "accuracy", "macro_f1", "ece", "ece_ts", "nll",
                                         "head_accuracy", "middle_accuracy", "tail_accuracy"}  # digits-lt
        assert trial["value"] == trial["metrics"]["balanced_accuracy"]


@pytest.mark.parametrize("name", ["r.db", "r.journal"])
def test_rerun_resumes_up_to_trials(tmp_path, name):
    db = tmp_path / name
    assert main(_argv(db, "--out", str(tmp_path / "o"), trials=2)) == 0
    first = _key(_complete(db))
    assert main(_argv(db, "--out", str(tmp_path / "o"), trials=4)) == 0
    trials = _complete(db)
    assert len(trials) == 4 and _key(trials)[:2] == first
    assert trials[0].user_attrs["metrics"]["balanced_accuracy"] == trials[0].value
    assert main(_argv(db, "--out", str(tmp_path / "o"), trials=4)) == 0  # done: runs nothing
    assert _key(_complete(db)) == _key(trials)


@pytest.mark.parametrize("name", ["k.db", "k.journal"])
def test_killed_sweep_resumes_without_losing_trials(tmp_path, name):
    """kill -9 in the middle of a trial: the next worker fails it after three silent heartbeats
    and completes the sweep, on an RDB storage and on a journal file alike."""
    db = tmp_path / name
    # a trial must outlast several polls of the study (each loads it anew); at 40 epochs one
    # fresh-clone run saw all six trials finish before its first successful poll
    worker = _spawn(db, tmp_path / "o", trials=6, epochs="200")
    deadline = time.monotonic() + 30
    while not _complete(db) and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    before = _key(_complete(db))
    assert 1 <= len(before) < 6
    assert main(_argv(db, "--out", str(tmp_path / "o"), trials=6, epochs="200")) == 0
    after = _complete(db)
    assert len(after) == 6 and set(before) <= set(_key(after))
    study = optuna.load_study(study_name="s", storage=_storage(db))
    assert not study.get_trials(states=(TrialState.RUNNING,))  # the killed trial was failed, not left


def test_a_trial_left_running_without_any_heartbeat_is_failed_not_awaited(tmp_path):
    """A worker killed between creating its trial and the trial's first heartbeat leaves a running
    trial that optuna never finds stale; the next worker must not wait for it forever."""
    db = tmp_path / "h.db"
    with warnings.catch_warnings():  # optuna: heartbeats are experimental and meant for optimize()
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=1, grace_period=3)
        optuna.create_study(storage=storage, study_name="s", direction="maximize").ask()  # RUNNING, no heartbeat
    worker = _spawn(db, tmp_path / "o", trials=1, epochs="2")
    try:
        _, err = worker.communicate(timeout=90)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_silent_trial_is_failed_after_three_heartbeats_and_a_beating_one_is_not(tmp_path):
    storage = _storage(tmp_path / "l.journal")
    study = optuna.create_study(storage=storage, study_name="s")
    study_id = storage.get_study_id_from_name("s")
    silent, alive, unstamped = study.ask(), study.ask(), study.ask()
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in (silent, alive)]
    storage.set_trial_system_attr(ids[0], liveness.KEY, time.time() - 3.5)
    with liveness.beating(storage, ids[1], 0.05):
        time.sleep(0.5)
        assert liveness.fail_lapsed(storage, study_id, period=1.0) == [silent.number]
        # silent for 0.3 s: the one that never beat (started 0.5 s ago), not the one stamped every 0.05 s
        assert liveness.fail_lapsed(storage, study_id, period=0.1) == [unstamped.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    time.sleep(0.4)  # no more stamps: now it lapses too
    assert liveness.fail_lapsed(storage, study_id, period=0.1) == [alive.number]


def test_two_workers_share_one_study(tmp_path):
    db = tmp_path / "w.db"
    workers = [_spawn(db, tmp_path / f"o{i}", trials=6, epochs="5") for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    assert len({t.number for t in complete}) == 6 and len({t.params["epsilon"] for t in complete}) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    # both workers report the whole study
    for i in range(2):
        assert len(json.loads((tmp_path / f"o{i}" / "results.json").read_text())["trials"]) == 6


@pytest.mark.parametrize("objective", ["ece", "accuracy:1,ece:-2"])
def test_a_sweep_can_optimise_a_calibration_metric_or_a_weighted_objective(tmp_path, capsys, objective):
    out = tmp_path / "out"
    assert main(_argv(tmp_path / "c.db", "--objective", objective, "--out", str(out), trials=2)) == 0
    results = json.loads((out / "results.json").read_text())
    weights = {"ece": {"ece": 1.0}, "accuracy:1,ece:-2": {"accuracy": 1.0, "ece": -2.0}}[objective]
    for trial in results["trials"]:
        assert trial["value"] == pytest.approx(sum(w * trial["metrics"][m] for m, w in weights.items()))
    pick = min if objective == "ece" else max
    assert results["direction"] == ("minimize" if objective == "ece" else "maximize")
    assert results["best"]["value"] == pick(t["value"] for t in results["trials"])
    assert results["primary"] == ("ece" if objective == "ece" else "1*accuracy-2*ece")


@pytest.mark.parametrize("param", ["epsilon", "epsilon=", "epsilon=4:1", "epsilon=a:b", "epsilon=1:2:3",
                                   "=1:2", "gamma=1,1"])
def test_bad_param_syntax_exits_2(tmp_path, capsys, param):
    argv = ["sweep", "--task", "digits-lt", "--loss", "poly1", "--param", param,
            "--storage", f"sqlite:///{tmp_path / 'b.db'}"]
    assert main(argv) == 2
    assert "--param" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists()


@pytest.mark.parametrize("argv, named", [
    (["--param", "gamma=0:2"], "`--param`"),               # poly1 has no gamma
    (["--param", "epsilon=-1:4", "--param", "epsilon=0,1"], "`--param`"),
    (["--param", "epsilon=-1:4", "--trials", "0"], "argument --trials: expected a whole number >= 1"),
    (["--param", "epsilon=-1:4", "--objective", "map"], "`--objective` names 'map', not a metric of this task"),
    (["--param", "epsilon=-1:4", "--objective", "ece:x"], "argument --objective: expected METRIC or METRIC:WEIGHT"),
])
def test_bad_values_exit_2(tmp_path, capsys, argv, named):
    full = ["sweep", "--task", "digits-lt", "--loss", "poly1", *argv, "--storage", f"sqlite:///{tmp_path / 'b.db'}"]
    assert main(full) == 2
    assert named in capsys.readouterr().err


def test_study_with_other_settings_is_refused(tmp_path, capsys):
    db = tmp_path / "m.db"
    assert main(_argv(db, "--out", str(tmp_path / "o"), trials=1)) == 0
    assert main(_argv(db, "--out", str(tmp_path / "o"), trials=2, epochs="2")) == 2
    assert "`--study`" in capsys.readouterr().err and len(_complete(db)) == 1
