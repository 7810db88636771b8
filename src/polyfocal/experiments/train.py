"""Train one model per loss and seed on a :class:`~polyfocal.experiments.tasks.Task`.

Loss specs are registry names or aliases with parameters: ``"poly1:epsilon=2"``,
``"poly1_focal:epsilon=1,gamma=2"``, and on dense-toy a box loss after ``+``:
``"qfl+dfl"``, ``"sigmoid_focal+l1"`` (:func:`parse_losses`, :mod:`.boxes`). A run is
deterministic given its seed (model initialisation and batch order), the data being fixed
by the task.

Every batch's loss is normalised by the number of positive locations (dense tasks, as
RetinaNet) or of examples; GHM-C keeps its own mean and moving average. Under ``torchrun``
each rank trains on its slice of every global batch with the normaliser all-reduced
(:mod:`.distributed`), which takes the same steps as one process on the whole batch.

    >>> from polyfocal.experiments import make_task, parse_losses, compare
    >>> results = compare(make_task("dense-toy", n_train=32), parse_losses("bce,sigmoid_focal"),
    ...                   seeds=[0, 1], epochs=1)              # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .. import __version__, analysis
from .._backend import use_backend
from .._errors import InputValueError
from .._loss_module import StatisticsModule
from ..modules import MODULES
from ..longtail import class_balanced_weight, class_prior
from ..registry import build_loss, declaration, get_loss_function
from . import boxes
from .distributed import current
from .tasks import Task

__all__ = ["LossSpec", "parse_losses", "loss_family", "train_run", "compare", "versions"]

# keywords that the experiment sets itself, not the user
_RESERVED = ("reduction", "normalizer", "validate", "backend", "weight", "ignore_index", "pos_weight",
             "distributed")
# losses whose dense target is (labels, IoU of the predicted box) when boxes are regressed
_QUALITY_TARGET = ("quality_focal_loss", "varifocal_loss")


@dataclass(frozen=True)
class LossSpec:
    """One loss to train with: its label (the text given), registered name, parameters and box loss."""

    label: str
    name: str
    params: dict
    box: str | None = None


def loss_family(name: str) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` for classification losses, ``"region"`` for segmentation's region
    losses; None for the others (DFL, GHM-R)."""
    family = declaration(name).family
    return family if family in ("softmax", "sigmoid", "region") else None


def parse_value(text: str):
    """A parameter value from the command line: a number, ``none``, ``true``/``false``, ``a/b`` (a tuple) or a word."""
    low = text.lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    if "/" in text:
        return tuple(float(v) for v in text.split("/"))
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _try_loss(name: str, params: dict) -> None:
    """Build the loss and call it once on a tiny example of its family, so that a value it rejects
    (``gamma=-1``) is found before any training, not at the first step. The example has as many
    classes as a per-class parameter given as a tuple (``alpha=0.2/0.8``), else 3."""
    family = loss_family(name)
    if family == "softmax":  # "balanced" stands for a per-class vector made from the task's labels
        params = {k: class_balanced_weight([1.0] * 3) if v == BALANCED else v for k, v in params.items()}
    loss = build_loss(name, **params)
    if family is None:
        return
    per_class = [len(v) for k, v in params.items() if k in ("alpha", "weight", "pos_weight") and isinstance(v, tuple)]
    classes = per_class[0] if per_class else 3
    logits = torch.zeros(2, classes, 2) if family == "region" else torch.zeros(2, classes)
    target = torch.zeros(2, classes) if family == "sigmoid" else torch.tensor([[0, 1], [1, 0]] if family == "region"
                                                                             else [0, 1])
    with use_backend("reference"):
        loss(logits, target)


def parse_losses(text: str, argument: str = "--losses") -> list[LossSpec]:
    """Parse ``"ce,focal:gamma=1,poly1_focal:epsilon=2,gamma=1"`` into :class:`LossSpec` s.

    A comma-separated item ``key=value`` without ``:`` adds a parameter to the loss before
    it. ``name+l1`` or ``name+dfl`` adds a box loss (dense-toy, :mod:`.boxes`). Values: numbers, ``none``, ``true``/``false``, ``a/b/c`` for a tuple (``epsilons=1/0.5``),
    or a word (``tail=drop``).

    Raises:
        ValueError: unknown loss or parameter, malformed item, a loss that is not for
            classification; the message names ``argument``.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputValueError(f"`{argument}` must list at least one loss, e.g. ce,focal,poly1; got {text!r}")
    items: list[list] = []  # [label, name-text, {params}]
    for raw in (t.strip() for t in text.split(",")):
        if not raw:
            continue
        if ":" in raw:
            head, _, rest = raw.partition(":")
        else:
            head, rest = (None, raw) if "=" in raw else (raw, "")
        if head is None:
            if not items:
                raise InputValueError(f"`{argument}`: parameter {raw!r} comes before any loss name")
            items[-1][0] += "," + raw
        else:
            items.append([raw, head.strip(), {}])
        for pair in (p for p in rest.split(":") if p.strip()):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise InputValueError(f"`{argument}`: malformed parameter {pair!r} in {raw!r}; "
                                      f"expected NAME:KEY=VALUE, e.g. poly1:epsilon=2")
            items[-1][2][key.strip()] = parse_value(value.strip())
    specs = []
    for label, head, params in items:
        head, plus, box = head.partition("+")
        if plus and box.strip() not in boxes.BOX_LOSSES:
            raise InputValueError(f"`{argument}`: unknown box loss {box.strip()!r} in {label!r}; "
                                  f"expected one of {', '.join(boxes.BOX_LOSSES)}, e.g. qfl+dfl")
        name = analysis.resolve_loss_name(head.strip(), argument)
        if loss_family(name) is None:
            raise InputValueError(f"`{argument}`: {name!r} is not a classification loss")
        if plus and loss_family(name) != "sigmoid":
            raise InputValueError(f"`{argument}`: a box loss goes with a sigmoid loss on dense-toy; got {label!r}")
        accepted = [k for k in inspect.signature(get_loss_function(name)).parameters
                    if k not in _RESERVED][2:]
        for key in params:
            if key not in accepted:
                raise InputValueError(f"`{argument}`: {name} has no parameter {key!r}; "
                                      f"it takes: {', '.join(accepted) or 'none'}")
        try:
            _try_loss(name, params)
        except (TypeError, ValueError) as error:
            raise InputValueError(f"`{argument}`: cannot build {label!r}: {error}") from None
        specs.append(LossSpec(label, name, params, box.strip() if plus else None))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise InputValueError(f"`{argument}` lists a loss twice: {', '.join(labels)}")
    return specs


def check_compatible(task: Task, specs, argument: str = "--losses") -> None:
    """Raise ``ValueError`` naming ``argument`` if a loss's family does not fit the task."""
    for spec in specs:
        family = loss_family(spec.name)
        if family not in task.families:
            hint = {("sigmoid",): "sigmoid losses (bce, sigmoid_focal, poly1_focal, qfl, vfl, ghm_c, ...)",
                    ("softmax", "region"): "softmax losses (ce, focal, poly1, ...) and region losses (dice, "
                                           "dice_focal, focal_tversky, unified_focal, ...)"}.get(
                task.families, "softmax losses (ce, focal, poly1, ...)")
            raise InputValueError(f"`{argument}`: {spec.label!r} is a {family} loss; task {task.name!r} "
                                  f"({task.kind}) takes {hint}")
        if spec.box and task.boxes_train is None:
            raise InputValueError(f"`{argument}`: {spec.label!r} regresses boxes; task {task.name!r} has no box "
                                  f"targets (use dense-toy)")
    if len({spec.box is None for spec in specs}) > 1:
        raise InputValueError(f"`{argument}`: give every loss a box loss (qfl+dfl, sigmoid_focal+l1) or none, "
                              f"so that all runs report the same metrics")


def train_run(task: Task, spec: LossSpec, seed: int, epochs: int | None = None,
              batch_size: int | None = None, lr: float | None = None, backend: str = "reference",
              on_batch=None) -> dict:
    """Train one model; returns ``{"metrics", "curves", "seconds"}`` (final-epoch test metrics).

    ``on_batch(logits, target)``, if given, sees every training batch before its step.
    """
    with use_backend(backend):
        return _train_run(task, spec, seed, epochs, batch_size, lr, on_batch)


#: the share of each class's training examples held out as validation data where a loss learns from it
VALIDATION_FRACTION = 0.2


def learns_from_validation(spec: LossSpec) -> bool:
    """Whether the spec's loss Module updates itself from validation predictions (AdaFocal)."""
    return hasattr(MODULES[declaration(spec.name).module], "update")


def with_validation_if_needed(task: Task, specs) -> Task:
    """``task`` itself, or, where a loss learns from validation data, the task with
    :data:`VALIDATION_FRACTION` of its training examples held out, for every loss alike."""
    if task.x_val is None and any(learns_from_validation(s) for s in specs):
        return task.with_validation(VALIDATION_FRACTION)
    return task


def accumulates(spec: LossSpec) -> bool:
    """Whether the spec's loss Module accumulates statistics over the batches it sees (GHM, EQLv2, EFL, seesaw)."""
    return issubclass(MODULES[declaration(spec.name).module], StatisticsModule)


#: keywords a loss may read from the training labels, and how: logit adjustment's prior, LDAM's class counts
CLASS_STATISTICS = {"prior": class_prior, "class_counts": lambda counts: counts.double()}


#: a ``--losses`` value of ``weight`` or ``alpha``: the class-balanced weights of the training labels' counts
#: (Cui et al., beta = 0.9999): ``focal:alpha=balanced``
BALANCED = "balanced"


def with_class_statistics(spec: LossSpec, task: Task) -> LossSpec:
    """``spec`` with the training set's class statistics for the keywords of :data:`CLASS_STATISTICS` that its
    loss takes and the spec does not give, and for a ``weight`` or ``alpha`` given as :data:`BALANCED` (a class
    absent from the training labels counts as one example)."""
    keywords = inspect.signature(get_loss_function(spec.name)).parameters
    wanted = [k for k in CLASS_STATISTICS if k in keywords and k not in spec.params]
    balanced = {k: v for k, v in spec.params.items() if v == BALANCED}
    if not (wanted or balanced) or task.kind not in ("multiclass", "binary") or accumulates(spec):  # seesaw counts
        return spec
    counts = torch.bincount(task.y_train.reshape(-1), minlength=task.num_classes).clamp_min(1)
    statistics = {k: CLASS_STATISTICS[k](counts) for k in wanted}
    statistics.update({k: class_balanced_weight(counts, beta=0.9999) for k in balanced})
    return replace(spec, params={**spec.params, **statistics})


def _criterion(spec: LossSpec, world: int):
    """``(loss(logits, target, normalizer), module)`` for one spec; the Module where it holds state."""
    if spec.name == "ghm_c_loss":  # the Module's moving average; its own mean, all-reduced by the loss
        module = build_loss(spec.name, **spec.params)
        return (lambda logits, target, normalizer: module(logits, target) * world), module
    if learns_from_validation(spec) or accumulates(spec):
        # AdaFocal's bins, or EQLv2's and EFL's gradient statistics across batches (and ranks)
        module = build_loss(spec.name, **spec.params)
        return (lambda logits, target, normalizer: module(logits, target, normalizer=normalizer)), module
    function = get_loss_function(spec.name)
    if loss_family(spec.name) == "region":  # a mean of overlaps: no count to divide by
        return (lambda logits, target, normalizer: function(logits, target, **spec.params)), None
    return (lambda logits, target, normalizer: function(logits, target, **spec.params, normalizer=normalizer)), None


@torch.no_grad()
def _update_from_validation(task: Task, model, module, group) -> None:
    """The loss's own step at the end of an epoch: the model's validation probabilities (this rank's
    share; the loss gathers the ranks' shares)."""
    if task.x_val is None:
        raise InputValueError(f"`--losses`: {module.__class__.__name__} learns from validation data, and task "
                              f"{task.name!r} holds none (compare and sweep hold it out themselves)")
    model = getattr(model, "module", model)
    model.eval()
    index = group.shard(torch.arange(len(task.x_val)))
    logits = model(task.x_val[index].to(group.device))
    module.update(torch.softmax(logits.double(), 1), task.y_val[index].to(group.device))


def _train_run(task, spec, seed, epochs, batch_size, lr, on_batch=None) -> dict:
    epochs = task.epochs if epochs is None else epochs
    batch_size = task.batch_size if batch_size is None else batch_size
    family, group = loss_family(spec.name), current()
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = group.wrap(task.make_model(family, boxes.box_channels(spec.box) if spec.box else 0))
    criterion, module = _criterion(with_class_statistics(spec, task), group.world)
    if module is not None:
        module.to(group.device)  # its statistics beside the logits
    optimizer = torch.optim.Adam(model.parameters(), lr=task.lr if lr is None else lr)
    order = torch.Generator().manual_seed(seed)
    primary = task.metrics_for(spec.box)[0]
    curves = {"epoch": [], "train_loss": [], f"test_{primary}": []}
    n = len(task.x_train)
    for epoch in range(1, epochs + 1):
        model.train()
        total, batches = 0.0, 0
        for index in torch.randperm(n, generator=order).split(batch_size):
            loss = _batch_loss(task, spec, criterion, model, group.shard(index), group, on_batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(group.total(loss.detach())), batches + 1
        if hasattr(module, "update"):
            _update_from_validation(task, model, module, group)
        metrics = _evaluate(task, model, family, spec.box, group, primary_only=epoch < epochs)
        curves["epoch"].append(epoch)
        curves["train_loss"].append(total / max(batches, 1) / group.world)
        curves[f"test_{primary}"].append(metrics[primary])
    if epochs == 0:
        metrics = _evaluate(task, model, family, spec.box, group)
    return {"metrics": metrics, "curves": curves, "seconds": time.perf_counter() - start}


def _batch_loss(task: Task, spec: LossSpec, criterion, model, index, group, on_batch):
    """This rank's share of the loss of a global batch (the shares add up to it times the world size)."""
    family = loss_family(spec.name)
    output = model(task.x_train[index].to(group.device))
    logits, box_output = output if spec.box else (output, None)
    labels = task.y_train[index].to(group.device)
    logits, target = task.loss_inputs(logits, labels, family)
    normalizer = (group.total(task.count(target)).clamp(min=1) / group.world).float()
    if spec.box:
        truth = task.boxes_train[index].to(group.device)
        if spec.name in _QUALITY_TARGET:  # GFL's joint score: the IoU of the box this location predicts
            target = (labels, boxes.overlap(boxes.decode(spec.box, box_output.detach()), truth))
    if on_batch is not None:
        on_batch(logits.detach(), target)
    loss = criterion(logits, target, normalizer)
    if spec.box:
        loss = loss + boxes.box_loss(spec.box, box_output, truth, labels < task.num_classes, normalizer)
    return loss


@torch.no_grad()
def _evaluate(task: Task, model, family: str, box: str | None, group, primary_only: bool = False) -> dict[str, float]:
    model = getattr(model, "module", model)  # the same weights on every rank: no collective needed
    model.eval()
    output = model(task.x_test.to(group.device))
    if box is None:
        return task.evaluate(output.cpu(), family, primary_only=primary_only)
    logits, box_output = output
    return task.evaluate(logits.cpu(), family, boxes.decode(box, box_output).cpu())


def versions() -> dict[str, str]:
    """Versions of what produced a result."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "polyfocal": __version__,
           "numpy": np.__version__}
    if "sklearn" in sys.modules:
        out["scikit-learn"] = sys.modules["sklearn"].__version__
    return out


def _progress(total: int, enabled: bool):
    """A tqdm bar where standard error is a terminal and tqdm is installed, else one plain line per run
    on stderr (a bar's carriage returns would flood a log); ``update(text)`` per run."""
    if not enabled:
        return lambda text: None, lambda: None
    bar_class = _tqdm() if sys.stderr.isatty() else None
    if bar_class is None:
        count = [0]

        def update(text):
            count[0] += 1
            print(f"[{count[0]}/{total}] {text}", file=sys.stderr, flush=True)
        return update, lambda: None
    bar = bar_class(total=total, file=sys.stderr)

    def update(text):
        bar.set_postfix_str(text)
        bar.update()
    return update, bar.close


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def compare(task: Task, specs, seeds, epochs: int | None = None, batch_size: int | None = None,
            lr: float | None = None, backend: str = "reference", threads: int | None = 1,
            progress: bool = False, partial: bool = False) -> dict:
    """Train every loss with every seed; the results as a JSON-ready dict.

    With ``partial``, an interrupt (Ctrl-C) after at least one run returns the runs that finished and
    names the others in ``"unfinished"`` (empty after a whole comparison); before any, or without
    ``partial``, the interrupt goes on.

    ``backend="reference"`` by default: these models are small, and compiling a fused
    kernel would take longer than the run. ``threads`` sets ``torch.set_num_threads`` for
    the duration (None leaves it).
    """
    check_compatible(task, specs)
    task = with_validation_if_needed(task, specs)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputValueError("`--seeds` must give at least one seed")
    if epochs is not None and epochs < 0:
        raise InputValueError(f"`--epochs` must be >= 0; got {epochs}")
    before = torch.get_num_threads()
    update, close = _progress(len(specs) * len(seeds), progress)
    runs = []
    try:
        if threads:
            torch.set_num_threads(threads)
        for spec in specs:
            for seed in seeds:
                run = train_run(task, spec, seed, epochs, batch_size, lr, backend)
                runs.append({"loss": spec.label, "seed": seed, **run})
                primary = task.metrics_for(spec.box)[0]
                update(f"{spec.label} seed {seed}: {primary}={run['metrics'][primary]:.4f} "
                       f"({run['seconds']:.1f} s)")
    except KeyboardInterrupt:
        if not (partial and runs):
            raise  # nothing finished to report, or the caller stops as a whole
    finally:
        close()
        torch.set_num_threads(before)
    finished = {(run["loss"], run["seed"]) for run in runs}
    unfinished = [f"{spec.label} seed {seed}" for spec in specs for seed in seeds if (spec.label, seed) not in finished]
    config = {"task": task.name, "task_options": task.options, "losses": [asdict(s) for s in specs],
              "seeds": seeds, "epochs": task.epochs if epochs is None else epochs,
              "batch_size": batch_size or task.batch_size, "lr": lr or task.lr, "backend": backend,
              "threads": threads, "optimizer": "Adam", "metrics_at": "final epoch",
              "normalizer": {"dense": "positive locations", "segmentation": "pixels"}.get(task.kind, "examples"),
              "processes": current().world}
    metrics = task.metrics_for(specs[0].box)
    return {"config": config, "versions": versions(), "task": task.summary(), "metrics": list(metrics),
            "primary": metrics[0], "runs": runs, "unfinished": unfinished}
