"""Which loss wins on your data: small built-in tasks, training runs over seeds, and reports.

This layer sits on top of the library (it imports :mod:`polyfocal`; nothing in the library
imports it). The built-in tasks need scikit-learn and the figure needs matplotlib:
``pip install 'polyfocal[experiments]'``.

    >>> from polyfocal.experiments import compare, make_task, parse_losses, write_report
    >>> task = make_task("digits-lt", imbalance=50)                        # doctest: +SKIP
    >>> results = compare(task, parse_losses("ce,focal,poly1:epsilon=2"), seeds=[0, 1, 2])  # doctest: +SKIP
    >>> write_report(results, "runs/digits")                               # doctest: +SKIP

or from the shell: ``polyfocal compare --task digits-lt --losses ce,focal,poly1 --seeds 3 --out runs/digits``.
"""

from .metrics import (accuracy, average_precision, balanced_accuracy, expected_calibration_error, macro_f1,
                      roc_auc, t_interval)
from .reproduce import FINDINGS, ReproduceConfig, reproduce_findings, verdict, write_reproduce_report
from .report import format_table, summarize, write_report
from .tasks import TASKS, Task, load_data, make_task
from .train import LossSpec, compare, loss_family, parse_losses, train_run

__all__ = [
    "Task", "TASKS", "make_task", "load_data",
    "LossSpec", "parse_losses", "loss_family", "train_run", "compare",
    "summarize", "format_table", "write_report",
    "ReproduceConfig", "reproduce_findings", "verdict", "write_reproduce_report", "FINDINGS",
    "accuracy", "balanced_accuracy", "macro_f1", "expected_calibration_error", "average_precision",
    "roc_auc", "t_interval",
]
