"""The ``polyfocal`` command line: ``polyfocal explain {coefficients,curves,truncation,share,density,calibration}``.

Each ``explain`` topic writes PNG(s) to ``--out`` and prints a short text summary. The
parser is built from a list of command adders (:data:`COMMANDS`), so further commands
(``compare``, ``sweep``, ``reproduce``) are one function each::

    polyfocal explain coefficients --loss focal --gamma 2 --out figures
    polyfocal explain curves --losses ce,focal,poly1 --epsilon 2 --out figures
    polyfocal explain truncation --delta 0.01 --zeta 1e-3 --out figures
    polyfocal explain density --n 100000 --positive-fraction 0.01 --out figures
    python -m polyfocal explain share --steps 200 --out figures
    polyfocal explain calibration --predictions val.pt --out figures

Plots need matplotlib (``pip install 'polyfocal[plots]'``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import pickle
import sys
from typing import Callable, Sequence

import numpy as np
import torch

from . import __version__, analysis
from ._arguments import (Parser, at_least_one, fail, innermost, interrupted, non_negative_int, output_directory,
                         positive_float,
                         positive_int)
from ._backend import use_backend
from ._errors import InputError, InputValueError
from .adafocal import AdaFocalLoss
from .registry import get_loss_function, loss_hyperparameters

__all__ = ["main", "build_parser", "COMMANDS"]


class CommandError(InputValueError):
    """A user error found after parsing; printed as ``polyfocal: error: ...``, exit code 2."""


# --- shared options -------------------------------------------------------------------------------

def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _add_loss_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loss parameters (each applies to every listed loss that has it)")
    for h in loss_hyperparameters():
        parse = {} if h.choices else dict(type=h.parse)
        group.add_argument(h.option, dest=f"param_{h.name}", default=None, choices=h.choices, help=h.help, **parse)


def _add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_directory, default=".",
                        help="directory for the PNG files (created; default: .)")


def _loss_params(args, losses: Sequence[str], accepted: Callable[[str], Sequence[str]]) -> dict[str, dict]:
    """The per-loss keyword arguments from the ``--gamma``-style flags."""
    options = loss_hyperparameters()
    given = {h.name: getattr(args, f"param_{h.name}") for h in options if getattr(args, f"param_{h.name}") is not None}
    params = {name: {} for name in losses}
    used = set()
    for name in losses:
        names = accepted(name)
        for keyword, value in given.items():
            if keyword in names:
                params[name][keyword] = value
                used.add(keyword)
        for h in options:
            if h.cli_default is not None and h.name in names and h.name not in params[name] and _required(name, h.name):
                params[name][h.name] = h.cli_default
    unused = [h.option for h in options if h.name in given and h.name not in used]
    if unused:
        raise CommandError(f"{', '.join(unused)} does not apply to any of: {', '.join(losses)}")
    return params


def _required(name: str, keyword: str) -> bool:
    parameter = inspect.signature(get_loss_function(name)).parameters[keyword]
    return parameter.default is inspect.Parameter.empty


def _keyword_names(name: str) -> list[str]:
    return list(inspect.signature(get_loss_function(name)).parameters)


def _resolve(names: Sequence[str], argument: str) -> list[str]:
    try:
        return [analysis.resolve_loss_name(n, argument) for n in names]
    except ValueError as error:
        raise CommandError(str(error)) from None


def _path(args, filename: str) -> str:
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, filename)


def _plots():
    try:
        from . import plots
    except ImportError as error:
        raise CommandError(str(error)) from None
    return plots


# --- explain topics -------------------------------------------------------------------------------

def _explain_coefficients(args) -> int:
    losses = _resolve(args.losses, "--loss")
    for name in losses:
        if name not in analysis.SERIES_LOSSES:
            raise CommandError(f"--loss {name!r} has no polynomial expansion; "
                               f"supported: {', '.join(analysis.SERIES_LOSSES)}")
    params = _loss_params(args, losses, lambda name: analysis.SERIES_LOSSES[name])
    path = _path(args, "coefficients.png")
    _plots().plot_coefficients(losses, n_terms=args.n_terms, params=params, path=path)
    print(f"Coefficients of (1 - p_t)^k, first {args.n_terms} terms (loss: a_k; gradient: -a_k k):")
    for name in ["cross_entropy"] + [n for n in losses if n != "cross_entropy"]:
        c = analysis.poly_coefficients(name, min(args.n_terms, 5), **params.get(name, {}))
        terms = "  ".join(f"{a:.4g}(1-p)^{k:g}" for a, k in zip(c.coefficients, c.powers))
        print(f"  {_label(name, c.params)}: {terms}  ...")
    print(f"wrote {path}")
    return 0


def _label(name: str, params: dict) -> str:
    inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in params.items() if v is not None)
    return f"{name}({inner})" if inner else name


def _explain_curves(args) -> int:
    losses = _resolve(args.losses, "--losses")
    for name in losses:
        if name not in analysis.CURVE_LOSSES:
            raise CommandError(f"--losses {name!r} is not a function of one example's p_t; "
                               f"supported: {', '.join(analysis.CURVE_LOSSES)}")
    params = _loss_params(args, losses, _keyword_names)
    curves = analysis.loss_curves(losses, **params)
    plots = _plots()
    written = []
    for versus in (("p_t", "margin") if args.versus == "both" else (args.versus,)):
        path = _path(args, "curves.png" if versus == "p_t" else "curves_margin.png")
        plots.plot_loss_curves(curves, versus=versus, path=path)
        written.append(path)
    probes = [0.1, 0.5, 0.9]
    at = [int(np.argmin(np.abs(curves.p_t - q))) for q in probes]
    print("loss and |dL/dp_t| at p_t = " + ", ".join(f"{curves.p_t[i]:.2f}" for i in at) + ":")
    for name in curves.loss:
        values = "  ".join(f"{curves.loss[name][i]:.4f}/{curves.grad_p[name][i]:.4f}" for i in at)
        print(f"  {_label(name, curves.params[name])}: {values}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _explain_truncation(args) -> int:
    bound = analysis.theorem1_bound(args.zeta, args.delta)
    needed = analysis.terms_needed(args.zeta, args.delta)
    path = _path(args, "truncation.png")
    _plots().plot_truncation(delta=args.delta, zeta=args.zeta, max_terms=args.max_terms, path=path)
    print(f"|R_N| and |R'_N| below zeta={args.zeta:g} on [delta={args.delta:g}, 1]:")
    print(f"  Theorem 1 bound log_(1-delta)(delta*zeta) = {bound:.2f}")
    print(f"  smallest N found numerically          = {needed}")
    print(f"  at p = delta and N = {needed}: R_N = {float(analysis.remainder(args.delta, needed)):.3e}, "
          f"|R'_N| = {abs(float(analysis.remainder_derivative(args.delta, needed))):.3e}")
    print(f"wrote {path}")
    return 0


def _explain_density(args) -> int:
    logits, target = analysis.synthetic_imbalanced_batch(
        args.n, positive_fraction=args.positive_fraction, outlier_fraction=args.outlier_fraction,
        seed=args.seed)
    histogram = analysis.gradient_norm_histogram(logits, target, args.bins, ghm_bins=args.ghm_bins)
    path = _path(args, "density.png")
    _plots().plot_gradient_density(histogram, path=path)
    easy = histogram.counts[0] / histogram.n
    print(f"synthetic batch: N={args.n}, positives {args.positive_fraction:g}, "
          f"flipped labels {args.outlier_fraction:g}")
    print(f"  {easy:.1%} of examples in the lowest g bin; they carry "
          f"{histogram.gradient[0] / histogram.gradient.sum():.1%} of the gradient before GHM, "
          f"{histogram.harmonized_gradient[0] / histogram.harmonized_gradient.sum():.1%} after")
    print(f"  highest g bin (outliers): {histogram.counts[-1]:g} examples, "
          f"{histogram.gradient[-1] / histogram.gradient.sum():.1%} of the gradient before, "
          f"{histogram.harmonized_gradient[-1] / histogram.harmonized_gradient.sum():.1%} after")
    print(f"wrote {path}")
    return 0


def _calibration_predictions(args) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)``: the ``--predictions`` file's, or synthetic ones drawn at a temperature of
    ``--overconfidence`` (so the logits themselves are over-confident by that factor)."""
    if args.predictions is None:
        gen = torch.Generator().manual_seed(args.seed)
        logits = torch.randn(args.n, 10, generator=gen, dtype=torch.float64) * 3
        labels = torch.multinomial(torch.softmax(logits / args.overconfidence, 1), 1, generator=gen).squeeze(1)
        return logits, labels
    try:
        data = torch.load(args.predictions, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CommandError(f"--predictions {args.predictions!r}: cannot read it as a torch file ({first.strip()})") from None
    if not isinstance(data, dict) or not {"logits", "labels"} <= set(data):
        raise CommandError(f"--predictions {args.predictions!r} must hold a dict with 'logits' (N, C) and 'labels' (N,)")
    return data["logits"], data["labels"]


def _explain_calibration(args) -> int:
    try:
        from . import calibration  # noqa: PLC0415
        calibration._torchmetrics()
    except ImportError as error:
        raise CommandError(str(error)) from None
    logits, labels = _calibration_predictions(args)
    temperature = calibration.fit_temperature(logits[0::2], labels[0::2])
    test_logits, test_labels = logits[1::2].double(), labels[1::2]
    reports = {name: calibration.calibration_report(test_logits, test_labels, temperature=t, bins=args.bins)
               for name, t in (("as predicted", 1.0), (f"temperature {temperature:.2f}", temperature))}
    plots = _plots()
    written = [_path(args, "reliability.png"), _path(args, "calibration_losses.png"), _path(args, "focal_bound.png")]
    plots.plot_reliability({name: (torch.softmax(test_logits / r.temperature, 1), test_labels)
                            for name, r in reports.items()}, bins=args.bins, path=written[0])
    adafocal = _adafocal_after_one_update(logits[0::2], labels[0::2])
    plots.plot_loss_curves(["cross_entropy", "focal_loss", "sample_dependent_focal_loss", "inverse_focal_loss",
                            "adafocal_loss"], params={"adafocal_loss": adafocal}, path=written[1])
    plots.plot_focal_bound(path=written[2])
    source = args.predictions or f"synthetic: {args.n} examples, logits over-confident by {args.overconfidence:g}"
    print(f"{source}; temperature fitted on the even rows: {temperature:.3f}; metrics on the odd rows:")
    print("  " + "".join(f"{k:>14}" for k in ("", "ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier")))
    for name, r in reports.items():
        values = (r.ece, r.adaptive_ece, r.classwise_ece, r.mce, r.nll, r.brier)
        print("  " + f"{name[:14]:>14}" + "".join(f"{v:>14.4f}" for v in values))
    print("AdaFocal's gammas after one update on the even rows (15 equal-mass bins of p_t; < 0: inverse form):")
    print("  " + " ".join(f"{g:.2f}" for g in adafocal["gammas"].tolist()))
    for path in written:
        print(f"wrote {path}")
    return 0


def _adafocal_after_one_update(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """AdaFocal's state (``gammas``, ``bin_edges``) after one step from these validation predictions."""
    module = AdaFocalLoss()
    module.update(torch.softmax(logits.double(), 1), labels)
    return {"gammas": module.gammas, "bin_edges": module.bin_edges}


def _train_share(name: str, params: dict, steps: int, seed: int) -> analysis.GradientShareTracker:
    """A linear classifier on Gaussian blobs trained with ``name``; the first-term share per step."""
    gen = torch.Generator().manual_seed(seed)
    classes, dim, n = 5, 16, 2048
    centers = 0.5 * torch.randn(classes, dim, generator=gen)  # overlapping: p_t stays well below 1
    target = torch.randint(0, classes, (n,), generator=gen)
    features = centers[target] + torch.randn(n, dim, generator=gen)
    model = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        model.weight.copy_(0.01 * torch.randn(classes, dim, generator=gen))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = get_loss_function(name)
    tracker = analysis.GradientShareTracker()
    with use_backend("reference"):  # a tiny model: compiling a fused kernel would cost more than it saves
        for _ in range(steps):
            batch = torch.randint(0, n, (128,), generator=gen)
            logits = model(features[batch])
            tracker.update(logits, target[batch])
            optimizer.zero_grad()
            loss_fn(logits, target[batch], **params).backward()
            optimizer.step()
    return tracker


def _explain_share(args) -> int:
    losses = _resolve(args.losses, "--losses")
    for name in losses:
        if name not in analysis.SERIES_LOSSES and name not in ("soft_truncated_loss", "hard_truncated_loss"):
            raise CommandError(f"--losses {name!r} is not a softmax classification loss")
    params = _loss_params(args, losses, _keyword_names)
    params = {name: analysis.loss_parameters(name, params[name]) for name in losses}
    histories = {_label(name, params[name]): _train_share(name, params[name], args.steps, args.seed)
                 for name in losses}
    path = _path(args, "share.png")
    _plots().plot_gradient_share(histories, path=path)
    print(f"mean first-term share of the CE gradient (= mean p_t), linear model on blobs, {args.steps} steps:")
    for label, tracker in histories.items():
        h = tracker.history
        first_over_half = next((i for i, v in enumerate(h) if v > 0.5), None)
        print(f"  {label}: start {h[0]:.3f}, end {h[-1]:.3f}, above 0.5 from step {first_over_half}")
    print(f"wrote {path}")
    return 0


def _add_explain(commands) -> None:
    explain = commands.add_parser("explain", help="pictures and numbers of the PolyLoss lens",
                                  description="Write PNG figures of the PolyLoss view of the losses.")
    topics = explain.add_subparsers(dest="topic", metavar="TOPIC", required=True)

    p = topics.add_parser("coefficients", help="coefficients of (1 - p_t)^k (PolyLoss Fig. 1)")
    p.add_argument("--loss", "--losses", dest="losses", type=_names, default=["focal_loss"],
                   help="comma-separated series losses or aliases (default: focal_loss)")
    p.add_argument("--n-terms", type=positive_int, default=10, help="terms to draw (default 10)")
    _add_loss_options(p)
    _add_out(p)
    p.set_defaults(handler=_explain_coefficients)

    p = topics.add_parser("curves", help="loss and gradient as functions of p_t")
    p.add_argument("--losses", "--loss", dest="losses", type=_names,
                   default=["cross_entropy", "focal_loss", "poly1_cross_entropy"],
                   help="comma-separated loss names or aliases (default: ce,focal,poly1)")
    p.add_argument("--versus", choices=("p_t", "margin", "both"), default="both",
                   help="x-axis: p_t, the logit margin, or both (two files; default)")
    _add_loss_options(p)
    _add_out(p)
    p.set_defaults(handler=_explain_curves)

    p = topics.add_parser("truncation", help="terms needed to truncate CE's series (Theorem 1)")
    p.add_argument("--delta", type=positive_float, default=0.01, help="smallest p_t covered (default 0.01)")
    p.add_argument("--zeta", type=positive_float, default=1e-3, help="tolerance (default 1e-3)")
    p.add_argument("--max-terms", type=positive_int, default=None, help="largest N drawn")
    _add_out(p)
    p.set_defaults(handler=_explain_truncation)

    p = topics.add_parser("share", help="first-term share of the CE gradient during training (Fig. 3b)")
    p.add_argument("--losses", "--loss", dest="losses", type=_names, default=["cross_entropy"],
                   help="comma-separated softmax losses to train with (default: ce)")
    p.add_argument("--steps", type=positive_int, default=200, help="training steps (default 200)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    _add_loss_options(p)
    _add_out(p)
    p.set_defaults(handler=_explain_share)

    p = topics.add_parser("density", help="gradient-norm density before/after GHM")
    p.add_argument("--n", type=positive_int, default=100_000, help="synthetic examples (default 100000)")
    p.add_argument("--positive-fraction", type=float, default=0.01, help="default 0.01")
    p.add_argument("--outlier-fraction", type=float, default=0.002, help="flipped labels (default 0.002)")
    p.add_argument("--bins", type=positive_int, default=30, help="histogram bins (default 30)")
    p.add_argument("--ghm-bins", type=positive_int, default=None, help="GHM unit regions (default: --bins)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    _add_out(p)
    p.set_defaults(handler=_explain_density)
    _add_explain_calibration(topics)


def _add_explain_calibration(topics) -> None:
    p = topics.add_parser("calibration", help="reliability before/after temperature scaling; calibration losses")
    p.add_argument("--predictions", default=None,
                   help="a torch file holding {'logits': (N, C), 'labels': (N,)} (default: a synthetic demo)")
    p.add_argument("--n", type=positive_int, default=20_000, help="synthetic examples (default 20000)")
    p.add_argument("--overconfidence", type=at_least_one, default=2.5,
                   help="synthetic logits' over-confidence: the temperature their labels were drawn at (default 2.5)")
    p.add_argument("--bins", type=positive_int, default=15, help="equal-width confidence bins (default 15)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    _add_out(p)
    p.set_defaults(handler=_explain_calibration)


def _add_compare(commands) -> None:
    from .experiments.command import add_compare  # the experiment layer sits on top of the library
    add_compare(commands)


def _add_reproduce(commands) -> None:
    from .experiments.reproduce import add_reproduce
    add_reproduce(commands)


def _add_sweep(commands) -> None:
    from .experiments.sweep import add_sweep  # optuna itself is imported only when a sweep runs
    add_sweep(commands)


#: Functions that each add one top-level command to the ``add_subparsers()`` object.
COMMANDS: list[Callable] = [_add_explain, _add_compare, _add_reproduce, _add_sweep]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="polyfocal", description="polyfocal: the cross-entropy family of losses.")
    parser.add_argument("--version", action="version", version=f"polyfocal {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 usage or input error, 130 interrupted)."""
    try:
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                innermost(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as exit_:  # --help, --version, usage errors
            return exit_.code if isinstance(exit_.code, int) else 2
        return args.handler(args)
    except InputError as error:  # a user's mistake; any other exception is a bug, with its traceback
        return fail(str(error))
    except KeyboardInterrupt:  # Ctrl-C: one line; commands that write results wrote what finished
        return interrupted()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
