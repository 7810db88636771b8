"""``polyfocal compare``: train one model per loss and seed, print the table, write the report.

    polyfocal compare --task digits-lt --losses ce,focal,poly1:epsilon=2 --seeds 3 --out runs/digits
    polyfocal compare --data mine.csv --label-column target --losses ce,focal --seeds 5 --out runs/mine
    torchrun --nproc_per_node=2 -m polyfocal compare --task dense-toy --losses sigmoid_focal,qfl --seeds 3
"""

from __future__ import annotations

import argparse
import os

from .._arguments import at_least_one, interrupted, non_negative_int, output_directory, positive_float, positive_int
from .._errors import InputValueError
from .distributed import join_from_environment, leave
from .report import format_table, partial_output, print_written, write_report
from .tasks import TASKS, load_data, make_task
from .train import compare, parse_losses

__all__ = ["add_compare"]


def _seeds(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or seeds (0,4,7); got {text!r}") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"a seed count must be >= 1; got {text!r}")
        return list(range(values[0]))
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected a count (3) or seeds >= 0 (0,4,7); got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"seeds must differ (a repeated seed repeats its run); got {text!r}")
    return values


def _run(args) -> int:
    group = join_from_environment()
    try:
        return _compare(args, group.main)
    finally:
        leave()


def _compare(args, main: bool) -> int:
    specs = parse_losses(args.losses, "--losses")
    if args.data:
        if args.task:
            raise InputValueError("give `--task` or `--data`, not both")
        for flag, value in (("--imbalance", args.imbalance), ("--n-train", args.n_train)):
            if value is not None:
                raise InputValueError(f"`{flag}` does not apply to `--data`")
        if args.image_size is not None and not os.path.isdir(args.data):
            raise InputValueError("`--image-size` applies only to an image folder given as `--data`")
        task = load_data(args.data, label_column=args.label_column, seed=args.data_seed,
                         image_size=args.image_size or 32)
    else:
        if not args.task:
            raise InputValueError("`--task` is required (or `--data FILE`); tasks: " + ", ".join(TASKS))
        if args.label_column:
            raise InputValueError("`--label-column` applies only to `--data`")
        task = make_task(args.task, imbalance=args.imbalance, n_train=args.n_train, seed=args.data_seed)
    results = compare(task, specs, args.seeds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      backend=args.backend, threads=args.threads, progress=main and not args.quiet, partial=main)
    if not main:
        return 0  # under torchrun, rank 0 reports
    print(f"{task.name}: {task.description}; {len(args.seeds)} seed(s), {results['config']['epochs']} epochs; "
          f"test metrics at the final epoch, mean [95% t-interval]")
    print(format_table(results))
    out = partial_output(args.out) if results["unfinished"] else args.out
    print_written(write_report(results, out))
    return interrupted(f"the runs that finished are in {out}") if results["unfinished"] else 0


def add_training_arguments(p) -> None:
    """The options of a training run that ``compare`` and ``sweep`` share."""
    p.add_argument("--epochs", type=positive_int, default=None, help="default: the task's")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the task's")
    p.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default: the task's)")
    p.add_argument("--imbalance", type=at_least_one, default=None,
                   help="digits-lt: largest/smallest class (default 50)")
    p.add_argument("--n-train", type=positive_int, default=None, help="tabular-imbalanced / dense-toy: training size")
    p.add_argument("--data-seed", type=non_negative_int, default=0, help="seed of the data and split (default 0)")
    p.add_argument("--backend", choices=("reference", "auto", "fused"), default="reference",
                   help="polyfocal engine (default reference: small models, no compile time)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")


def add_compare(commands) -> None:
    """Add ``compare`` to the CLI's subparsers object."""
    p = commands.add_parser("compare", help="train one model per loss and seed on a task; table and report",
                            description="Which loss wins on this data: train each loss with each seed, "
                                        "report mean and 95% t-intervals of the test metrics. Runs under torchrun too.")
    p.add_argument("--task", choices=list(TASKS), default=None, help="a built-in task")
    p.add_argument("--data", default=None, help="your own data instead: FILE.csv (header row), FILE.npz (X, y) "
                                                "or an image folder DIR/CLASS/*.png")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="image folders: resize to SIZE x SIZE RGB (default 32)")
    p.add_argument("--label-column", default=None, help="CSV label column (default: 'label', else the last)")
    p.add_argument("--losses", default="ce,focal,poly1",
                   help="comma-separated loss names or aliases with parameters, e.g. "
                        "ce,focal:gamma=1,poly1:epsilon=2 (default: ce,focal,poly1); focal:alpha=balanced for "
                        "class-balanced weights of the training labels; on dense-toy a box loss after +: "
                        "sigmoid_focal+l1,qfl+dfl")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2],
                   help="a count (3 = seeds 0,1,2) or a list 0,4,7 (default 3)")
    add_training_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", type=output_directory, default="compare-out",
                   help="directory for results.json, report.md, report.png (default: compare-out)")
    p.set_defaults(handler=_run)
