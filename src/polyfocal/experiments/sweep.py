"""``polyfocal sweep``: search a loss's hyperparameters with Optuna; resumable, shareable.

    polyfocal sweep --task digits-lt --loss poly1 --param epsilon=-1:4 --trials 20
    polyfocal sweep --task digits-lt --loss poly1_focal --param epsilon=-1:4 --param gamma=0,1,2

Each trial trains one model per seed (:func:`~polyfocal.experiments.train.train_run`) and
scores the mean of the task's primary metric over the seeds. Trials live in an Optuna storage
(an RDB, SQLite by default, or a journal file for a shared filesystem), so a sweep that was
stopped resumes where it stopped when run again with the same ``--study`` and ``--storage``,
and several processes running the same command share one study: ``--trials`` is the total of
finished trials over all of them. A trial whose process died is marked failed once it has been
silent for three heartbeats (:mod:`polyfocal.experiments.liveness`), and its place is taken by
a new trial. Needs ``pip install optuna``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .._arguments import interrupted, output_directory, positive_int
from .._errors import InputValueError
from .command import _seeds, add_training_arguments
from .distributed import require_single_process
from .figures import DPI, legible, panels
from .report import json_safe, print_written
from .tasks import LOWER_IS_BETTER, TASKS, make_task
from .tables import Table
from .train import (LossSpec, check_compatible, parse_losses, parse_value, train_run, versions,
                    with_validation_if_needed)

__all__ = ["add_sweep", "parse_param", "SearchParam", "parse_objective", "Objective"]


class SearchParam:
    """One searched parameter: a float range ``low:high`` or a list of choices ``a,b,c``."""

    def __init__(self, name: str, low: float | None = None, high: float | None = None, choices=None):
        self.name, self.low, self.high, self.choices = name, low, high, choices

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        return trial.suggest_float(self.name, self.low, self.high)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]"

    def as_dict(self) -> dict:
        if self.choices is not None:
            return {"name": self.name, "choices": list(self.choices)}
        return {"name": self.name, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Objective:
    """What a trial scores: one metric (its own direction), or a weighted sum of metrics (maximised)."""

    terms: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        if len(self.terms) == 1 and self.terms[0][1] == 1.0:
            return self.terms[0][0]
        return "".join(f"{'+' if w >= 0 and i else ''}{w:g}*{m}" for i, (m, w) in enumerate(self.terms))

    def direction(self) -> str:
        single = len(self.terms) == 1 and self.terms[0][1] == 1.0
        return "minimize" if single and self.terms[0][0] in LOWER_IS_BETTER else "maximize"

    def value(self, metrics: dict) -> float:
        return float(sum(w * metrics[m] for m, w in self.terms))

    def check(self, task) -> None:
        unknown = [m for m, _ in self.terms if m not in task.metrics]
        if unknown:
            raise InputValueError(f"`--objective` names {', '.join(map(repr, unknown))}, not a metric of this task; "
                                  f"its metrics: {', '.join(task.metrics)}")


def parse_objective(text: str) -> Objective:
    """``"ece"`` (one metric) or ``"accuracy:1,ece:-2"`` (a weighted sum, maximised); argparse type."""
    terms = []
    for part in (p.strip() for p in text.split(",")):
        name, colon, weight = part.partition(":")
        try:
            value = float(weight) if colon else 1.0
        except ValueError:
            value = math.nan
        if not re.fullmatch(r"[a-z_]+", name) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected METRIC or METRIC:WEIGHT,METRIC:WEIGHT (e.g. accuracy:1,ece:-2); "
                                             f"got {text!r}")
        terms.append((name, value))
    return Objective(tuple(terms))


def parse_param(text: str) -> SearchParam:
    """``"epsilon=-1:4"`` (float range) or ``"gamma=0,1,2"`` (choices); argparse type for ``--param``."""
    usage = "expected NAME=LOW:HIGH (e.g. epsilon=-1:4) or NAME=A,B,C (e.g. gamma=0,1,2)"
    name, eq, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not re.fullmatch(r"[A-Za-z_]\w*", name) or not value:
        raise argparse.ArgumentTypeError(f"{usage}; got {text!r}")
    if ":" in value:
        bounds = value.split(":")
        try:
            low, high = (float(b) for b in bounds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{usage}; got {text!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise argparse.ArgumentTypeError(f"range of {name!r} must have finite LOW < HIGH; got {text!r}")
        return SearchParam(name, low=low, high=high)
    choices = [parse_value(v.strip()) for v in value.split(",")]
    if any(isinstance(c, str) and not c for c in choices) or len(set(map(repr, choices))) != len(choices):
        raise argparse.ArgumentTypeError(f"choices of {name!r} must be distinct and non-empty; got {text!r}")
    return SearchParam(name, choices=choices)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise InputValueError("`sweep` needs Optuna: pip install optuna "
                              "(or pip install 'polyfocal[sweep]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # e.g. JournalStorage's
    return optuna


def _redact(url: str) -> str:
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


#: the package a database driver's module comes in (SQLAlchemy's default for postgresql:// is
#: psycopg from 2.1 on, psycopg2 before; for mysql://, MySQLdb)
_DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
            "pymysql": "pymysql", "pg8000": "pg8000", "asyncpg": "asyncpg"}


JOURNAL = "journal:"


def storage_url(text: str) -> str:
    """An RDB storage URL that names a known database whose driver is installed (and, for SQLite,
    a file in an existing directory), or ``journal:PATH``, a journal file in an existing directory
    (for a shared filesystem); checked when the command line is parsed."""
    if text.startswith(JOURNAL):
        path = text[len(JOURNAL):]
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if not path or not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(f"expected journal:PATH with PATH a file in an existing directory; "
                                             f"got {text!r}")
        return text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(text)
    except ArgumentError:
        raise argparse.ArgumentTypeError(f"expected a database URL such as sqlite:///runs/sweep.db or "
                                         f"postgresql://user@host/db; got {text!r}") from None
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except NoSuchModuleError:
        raise argparse.ArgumentTypeError(f"unknown database {url.drivername!r} in {_redact(text)}; "
                                         "expected sqlite, postgresql, mysql, ...") from None
    except ImportError as error:
        package = _DRIVERS.get(error.name, error.name or "its driver")
        raise argparse.ArgumentTypeError(f"{_redact(text)} needs a database driver: pip install {package}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = os.path.dirname(os.path.abspath(url.database))
        if not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(f"the directory of {text!r} does not exist: {folder!r}")
    return text


def _storage(optuna, url: str):
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len(JOURNAL):]))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def _storage_failure(url: str, error: Exception) -> InputValueError:
    """A server's refusal in one line: the URL (password masked), the driver's own words, the fix;
    retrying cannot cure it, so it is not retried."""
    cause = " ".join(str(getattr(error, "orig", None) or error).split())
    return InputValueError(f"cannot open the storage {_redact(url)}: {_redact(cause)}; check the host, port, "
                           "database, user and password in --storage")


def _open_study(optuna, args, config: dict, direction: str):
    """Create or load the study; several processes may race here, so retry a few times."""
    for attempt in range(5):
        try:
            storage = _storage(optuna, args.storage)
            study = optuna.create_study(storage=storage, study_name=args.study, direction=direction,
                                        load_if_exists=True)
            break
        except ValueError:
            raise
        except Exception as error:  # e.g. two processes creating the SQLite tables at once
            if not args.storage.startswith(("sqlite", JOURNAL)):  # a refused connection, a wrong password
                raise _storage_failure(args.storage, error) from None
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", config)
    elif stored != json_safe(config):
        changed = [k for k in config if stored.get(k) != json_safe(config[k])]
        raise InputValueError(f"`--study` {args.study!r} in {_redact(args.storage)} was started with other "
                              f"settings ({', '.join(changed)} differ); resume it with the same options "
                              f"or give another `--study`")
    return study, storage, storage.get_study_id_from_name(study.study_name)


class _Interrupts:
    """Ctrl-C during a sweep. Optuna's own bookkeeping must not be cut in the middle (an interrupt inside its
    ``tell`` leaves a trial half-recorded and raises an error of its own), so SIGINT only sets a flag there;
    inside a trial's training it stops the trial at once (recorded as pruned). The sweep stops after that."""

    def __init__(self):
        self.requested = self.training = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        signal.signal(signal.SIGINT, self.previous)
        return False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if self.training:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def training_run(self):
        """A trial's training: an interrupt here stops the trial (pruned) and, after it, the sweep."""
        self.training = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        except KeyboardInterrupt:
            raise _optuna().TrialPruned("interrupted (Ctrl-C)") from None
        finally:
            self.training = False


def _objective(args, task, base: LossSpec, space, total: int, storage, study_id: int, interrupts: _Interrupts):
    optuna = _optuna()
    from optuna.trial import TrialState

    from .liveness import beating

    def objective(trial):
        # the first `total` live or finished trials are the sweep; a later one (two workers that
        # asked at the same moment) is pruned at once rather than run past --trials
        live = sorted(t.number for t in trial.study.get_trials(deepcopy=False,
                                                               states=(TrialState.COMPLETE, TrialState.RUNNING)))
        if trial.number not in live[:total]:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("--trials already reached by other workers")
        params = {p.name: p.suggest(trial) for p in space}
        spec = LossSpec(base.label, base.name, {**base.params, **params})
        with beating(storage, storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                     args.heartbeat), interrupts.training_run():
            runs = [train_run(task, spec, seed, args.epochs, args.batch_size, args.lr, args.backend)
                    for seed in args.seeds]
        metrics = {m: float(np.mean([r["metrics"][m] for r in runs])) for m in task.metrics}
        trial.set_user_attr("params", params)
        trial.set_user_attr("metrics", json_safe(metrics))
        trial.set_user_attr("per_seed", json_safe([{"seed": s, **r["metrics"]} for s, r in zip(args.seeds, runs)]))
        trial.set_user_attr("seconds", sum(r["seconds"] for r in runs))
        value = args.objective.value(metrics)
        if not args.quiet:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            print(f"[trial {trial.number}] {shown}: {args.objective.label}={value:.4f}", file=sys.stderr, flush=True)
        return value
    return objective


def run_sweep(args) -> dict:
    """Run (or resume, or join) the sweep of ``args``; the completed trials as a JSON-ready dict."""
    optuna = _optuna()

    names = [p.name for p in args.param]
    if len(set(names)) != len(names):
        raise InputValueError(f"`--param` gives a parameter twice: {', '.join(names)}")
    base = parse_losses(args.loss, "--loss")
    if len(base) != 1:
        raise InputValueError(f"`--loss` must name one loss; got {args.loss!r}")
    base = base[0]
    # check every searched name and value against the loss, as parse_losses does for --losses
    probe = {p.name: (p.choices if p.choices is not None else [p.low, p.high]) for p in args.param}
    for i in range(max(len(v) for v in probe.values())):
        values = {k: v[min(i, len(v) - 1)] for k, v in probe.items()}
        text = base.name + "".join(f":{k}={v}" for k, v in {**base.params, **values}.items())
        parse_losses(text, "--param")
    task = make_task(args.task, imbalance=args.imbalance, n_train=args.n_train, seed=args.data_seed)
    check_compatible(task, [base], "--loss")
    task = with_validation_if_needed(task, [base])
    args.objective = args.objective or Objective(((task.primary, 1.0),))
    args.objective.check(task)
    direction = args.objective.direction()
    if args.study is None:
        args.study = f"{args.task}:{base.label}:" + ",".join(names)
    config = {"task": args.task, "task_options": task.options, "loss": base.label,
              "space": [p.as_dict() for p in args.param], "seeds": list(args.seeds),
              "epochs": task.epochs if args.epochs is None else args.epochs,
              "batch_size": args.batch_size or task.batch_size, "lr": args.lr or task.lr,
              "backend": args.backend, "primary": args.objective.label}
    study, storage, study_id = _open_study(optuna, args, config, direction)
    interrupts = _Interrupts()
    objective = _objective(args, task, base, args.param, args.trials, storage, study_id, interrupts)
    before = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        with interrupts:
            _optimize(study, objective, args, storage, study_id, interrupts)
    finally:
        torch.set_num_threads(before)
    return _results(study, args, config, args.objective.label, direction)


def _optimize(study, objective, args, storage, study_id: int, interrupts: _Interrupts) -> None:
    """Run trials until ``args.trials`` are complete (counting other workers'); a Ctrl-C stops it after
    the trial it cut short."""
    from optuna.trial import TrialState

    from .liveness import fail_lapsed

    waited = False
    while True:
        fail_lapsed(storage, study_id, args.heartbeat)  # trials of processes that died
        live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(t.state == TrialState.COMPLETE for t in live)
        if complete >= args.trials:
            return
        if len(live) >= args.trials:  # the rest are running elsewhere: wait for them
            if not waited and not args.quiet:
                print(f"waiting for {len(live) - complete} running trial(s) of other workers "
                      f"(a dead worker's trial is dropped after {3 * args.heartbeat} s)",
                      file=sys.stderr, flush=True)
            waited = True
            time.sleep(min(1.0, args.heartbeat))
            continue
        study.optimize(objective, n_trials=1)
        if interrupts.requested:
            raise KeyboardInterrupt


def _results(study, args, config: dict, primary: str, direction: str) -> dict:
    from optuna.trial import TrialState

    trials = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        trials.append({"number": t.number, "params": t.user_attrs.get("params", dict(t.params)), "value": t.value,
                       "metrics": t.user_attrs.get("metrics", {}), "per_seed": t.user_attrs.get("per_seed", []),
                       "seconds": t.user_attrs.get("seconds"),
                       "finished": t.datetime_complete.isoformat() if t.datetime_complete else None})
    pick = min if direction == "minimize" else max
    finite = [t for t in trials if t["value"] is not None and math.isfinite(t["value"])]
    best = pick(finite, key=lambda t: (t["value"], -t["number"])) if finite else None
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)}
    return {"study": study.study_name, "storage": _redact(args.storage), "direction": direction,
            "primary": primary, "config": config, "versions": {**versions(), "optuna": _optuna().__version__},
            "best": best, "trials": trials, "other_trials": counts}


def format_trials(results: dict) -> str:
    """One row per completed trial: its parameters and mean metrics; the best row starred."""
    trials = results["trials"]
    names = [p["name"] for p in results["config"]["space"]]
    metrics = list(trials[0]["metrics"]) if trials else [results["primary"]]
    best = results["best"]["number"] if results["best"] else None
    header = ["trial"] + names + metrics
    fmt_value = lambda v: f"{v:.4f}" if isinstance(v, float) else ("n/a" if v is None else str(v))  # noqa: E731
    rows = [[str(t["number"]) + (" *" if t["number"] == best else "")]
            + [fmt_value(t["params"].get(n)) for n in names] + [fmt_value(t["metrics"].get(m)) for m in metrics]
            for t in trials]
    return Table(header, rows).text()


@legible
def _plot(results: dict, path: str) -> None:
    space, primary, trials = results["config"]["space"], results["primary"], results["trials"]
    fig, axes = panels(len(space))
    best = results["best"]
    values = np.array([np.nan if t["value"] is None else t["value"] for t in trials], dtype=np.float64)
    for ax, param in zip(axes, space):
        raw = [t["params"].get(param["name"]) for t in trials]
        if "choices" in param:
            labels = [str(c) for c in param["choices"]]
            x = np.array([labels.index(str(v)) if str(v) in labels else np.nan for v in raw], dtype=np.float64)
            ax.set_xticks(range(len(labels)), labels)
        else:
            x = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
            ax.set_xlim(param["low"] - 0.03 * (param["high"] - param["low"]),
                        param["high"] + 0.03 * (param["high"] - param["low"]))
            if param["name"] in ("epsilon", "epsilons") and param["low"] < 0 < param["high"]:
                ax.axvline(0.0, color="0.6", ls=":", lw=1, label=f"{param['name']}=0")
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], values[order], "o", color="C0", alpha=0.7, label="trials")
        if best is not None:
            bx = best["params"].get(param["name"])
            bx = labels.index(str(bx)) if "choices" in param else bx
            ax.plot([bx], [best["value"]], "*", color="C3", ms=14, label=f"best (trial {best['number']})")
        ax.set_xlabel(param["name"])
        ax.set_ylabel(f"test {primary}")
        ax.legend()
    fig.suptitle(f"{results['config']['task']}, {results['config']['loss']}: {primary} against each "
                 f"parameter\n({len(trials)} trials, mean over {len(results['config']['seeds'])} seed(s))")
    fig.savefig(path, dpi=DPI)


def write_sweep(results: dict, out: str) -> dict[str, str]:
    """Write ``results.json`` and (with matplotlib) ``sweep.png`` under ``out``."""
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, "results.json")}
    with open(paths["json"], "w") as handle:
        json.dump(json_safe(results), handle, indent=1)
    if results["trials"]:
        try:
            paths["png"] = os.path.join(out, "sweep.png")
            _plot(results, paths["png"])
        except ImportError:
            del paths["png"]
    return paths


def _run(args) -> int:
    require_single_process("sweep", "Start several `polyfocal sweep` processes on one --storage to share a study.")
    try:
        results = run_sweep(args)
    except KeyboardInterrupt:
        return interrupted(f"the finished trials are in {_redact(args.storage)} (run the same command to go on)")
    config, best = results["config"], results["best"]
    print(f"study {results['study']!r} in {results['storage']}: {len(results['trials'])} completed trial(s); "
          f"{config['task']}, {config['loss']}, {len(config['seeds'])} seed(s), {config['epochs']} epochs; "
          f"{results['direction']} test {results['primary']} (mean over seeds)")
    if best is not None:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        print(f"best: {shown} -> {results['primary']}={best['value']:.4f} (trial {best['number']})")
    print(format_trials(results))
    print_written(write_sweep(results, args.out))
    return 0


def add_sweep(commands) -> None:
    """Add ``sweep`` to the CLI's subparsers object."""
    p = commands.add_parser("sweep", help="search a loss's hyperparameters with Optuna (resumable)",
                            description="Search loss hyperparameters on a task with Optuna. Trials are stored "
                                        "(SQLite by default): rerun the same command to resume, or run it in "
                                        "several processes to share the work. Needs optuna.")
    p.add_argument("--task", choices=list(TASKS), required=True, help="a built-in task")
    p.add_argument("--loss", required=True, help="one loss, with fixed parameters if any, e.g. poly1 or "
                                                 "poly1_focal:gamma=2")
    p.add_argument("--param", type=parse_param, action="append", required=True, metavar="NAME=LOW:HIGH",
                   help="a searched parameter: a float range (epsilon=-1:4) or choices (gamma=0,1,2); repeat")
    p.add_argument("--trials", type=positive_int, default=20,
                   help="completed trials in the study, over all runs and workers (default 20)")
    p.add_argument("--seeds", type=_seeds, default=[0], help="a count (1 = seed 0) or a list 0,4,7 (default 1)")
    p.add_argument("--storage", type=storage_url, default="sqlite:///polyfocal.db",
                   help="Optuna RDB storage URL, or journal:PATH for a journal file on a shared filesystem "
                        "(default sqlite:///polyfocal.db)")
    p.add_argument("--study", default=None, help="study name (default: TASK:LOSS:PARAMS)")
    p.add_argument("--objective", type=parse_objective, default=None,
                   help="what a trial scores: a metric of the task (e.g. ece, minimised) or a weighted sum "
                        "accuracy:1,ece:-2 (maximised); default the task's first metric")
    add_training_arguments(p)
    p.add_argument("--heartbeat", type=positive_int, default=10,
                   help="seconds between a trial's heartbeats; a trial silent for 3x this is failed "
                        "(its worker died) and rerun (default 10)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--out", type=output_directory, default="sweep-out",
                   help="directory for results.json and sweep.png (default: sweep-out)")
    p.set_defaults(handler=_run)
