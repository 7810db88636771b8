"""Small classification problems made locally, each with its model and its metrics.

``digits-lt`` (scikit-learn's bundled digits, long-tailed train split, balanced test),
``tabular-imbalanced`` (``make_classification`` with 1% positives), ``dense-toy``
(a per-pixel class map of small objects, ~1% positive locations, with each positive
location's distances to its object's box edges), ``seg-toy`` (the same images as a segmentation
task) and a user's own ``.csv``/``.npz`` or
image folder (:func:`load_data`). All run on a CPU in seconds.

    >>> task = make_task("dense-toy", n_train=64)                 # doctest: +SKIP
    >>> task.kind, task.num_classes, task.primary
    ('dense', 3, 'map')
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .._errors import InputValueError
from . import metrics as M
from .boxes import box_metrics
from .mosaics import digit_mosaics
from .segmentation import METRICS as SEGMENTATION_METRICS
from .segmentation import foreground_share, seg_images, segmentation_metrics

__all__ = ["Task", "TASKS", "make_task", "load_data"]

#: metrics reported for each kind of task; the first is the headline one
METRICS = {
    "multiclass": ("balanced_accuracy", "accuracy", "macro_f1", "ece", "ece_ts", "nll"),
    "binary": ("average_precision", "roc_auc"),
    "dense": ("map",),
    "multilabel": ("map",),
    "segmentation": SEGMENTATION_METRICS,
}
#: a long-tailed multi-class task's accuracy on its most frequent, middle and rarest thirds of classes
GROUP_METRICS = ("head_accuracy", "middle_accuracy", "tail_accuracy")
#: metrics of dense runs that also regress boxes (:mod:`.boxes`)
BOX_METRICS = ("map_box", "map", "loc_error")
#: metrics where lower is better
LOWER_IS_BETTER = ("ece", "ece_ts", "nll", "loc_error")


@dataclass
class Task:
    """A train/test split, a model factory, and how to score predictions.

    ``kind`` is ``"multiclass"`` (softmax losses, class-index targets), ``"binary"``
    (softmax losses on 2 logits or sigmoid losses on 1 logit) or ``"dense"`` (sigmoid
    losses on ``(N, C, H, W)`` with integer labels where ``C`` is background). Dense tasks
    may carry box targets ``(N, 4, H, W)``: each location's distances to its object's edges.
    """

    name: str
    kind: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    description: str
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    hidden: int = 64
    options: dict = field(default_factory=dict)
    boxes_train: torch.Tensor | None = None
    boxes_test: torch.Tensor | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def with_validation(self, fraction: float, seed: int = 0) -> "Task":
        """This task with ``fraction`` of each class's training examples held out as validation data
        (for a loss that learns from it, AdaFocal); the test split is unchanged."""
        if self.kind in ("dense", "segmentation") or self.x_val is not None:
            raise InputValueError(f"task {self.name!r} cannot hold out validation data (dense, or held out already)")
        train, val = _stratified_split(self.y_train.numpy(), fraction, np.random.default_rng(seed))
        return replace(self, x_train=self.x_train[train], y_train=self.y_train[train], x_val=self.x_train[val],
                       y_val=self.y_train[val], options={**self.options, "validation_fraction": fraction})

    @property
    def families(self) -> tuple[str, ...]:
        return {"multiclass": ("softmax",), "binary": ("softmax", "sigmoid"), "dense": ("sigmoid",),
                "multilabel": ("sigmoid",), "segmentation": ("softmax", "region")}[self.kind]

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS[self.kind] + (GROUP_METRICS if self.long_tailed else ())

    @property
    def long_tailed(self) -> bool:
        """A multi-class task built with an imbalance (digits-lt): it reports head, middle and tail accuracy."""
        return self.kind == "multiclass" and self.options.get("imbalance", 1) > 1

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def metrics_for(self, box: str | None) -> tuple[str, ...]:
        """The metrics of a run with box loss ``box`` (None: classification only); the first is the headline."""
        return self.metrics if box is None else BOX_METRICS

    def count(self, target) -> torch.Tensor:
        """What a batch's loss is normalised by: positive locations (dense, as RetinaNet), pixels (segmentation's
        per-pixel losses; a region loss is a mean of overlaps and takes none), else examples."""
        if self.kind == "segmentation":
            return torch.tensor(target.numel())
        if self.kind == "dense":
            labels = target[0] if isinstance(target, tuple) else target
            return (labels < self.num_classes).sum()
        return torch.tensor(len(target))

    def summary(self) -> dict:
        if self.kind == "multilabel":  # multi-hot: the images holding each label
            counts = self.y_train.sum(0).long()
        else:
            counts = torch.bincount(self.y_train.flatten().long(), minlength=self.num_classes + (self.kind == "dense"))
        extra = {"foreground_share": foreground_share(self.y_train, self.num_classes)} if (
            self.kind == "segmentation") else {}
        return {**extra, "name": self.name, "kind": self.kind, "description": self.description,
                "num_classes": self.num_classes, "n_train": len(self.x_train), "n_test": len(self.x_test),
                "n_val": 0 if self.x_val is None else len(self.x_val),
                "train_class_counts": counts.tolist(), "options": self.options}

    def make_model(self, family: str, box_channels: int = 0) -> nn.Module:
        """A fresh model (seed torch first); sigmoid heads start at the 1% prior of RetinaNet.

        With ``box_channels`` (dense tasks with boxes), the model returns ``(logits, box_output)``.
        """
        if box_channels and self.boxes_train is None:
            raise InputValueError(f"task {self.name!r} has no box targets; box losses need dense-toy")
        if self.kind in ("dense", "segmentation"):
            model = DenseNet(self.x_train.shape[1], self.num_classes, box_channels)
            classifier = model.classify
        else:
            outputs = 1 if (self.kind == "binary" and family == "sigmoid") else self.num_classes
            model = nn.Sequential(nn.Linear(self.x_train.shape[1], self.hidden), nn.ReLU(),
                                  nn.Linear(self.hidden, self.hidden), nn.ReLU(),
                                  nn.Linear(self.hidden, outputs))
            classifier = model[-1]
        if family == "sigmoid":
            nn.init.constant_(classifier.bias, -math.log(99.0))
        return model

    def loss_inputs(self, logits: torch.Tensor, y: torch.Tensor, family: str):
        """``(logits, target)`` in the form the loss family takes."""
        if self.kind == "binary" and family == "sigmoid":
            return logits.squeeze(1), y.float()
        return logits, y

    def evaluate(self, logits: torch.Tensor, family: str, boxes: torch.Tensor | None = None,
                 primary_only: bool = False) -> dict[str, float]:
        """The task's metrics for test-set logits (and predicted box distances, dense tasks); with
        ``primary_only``, a multi-class task's headline metric alone (a training curve's point: no
        temperature fit every epoch)."""
        if self.kind == "segmentation":
            return segmentation_metrics(logits.detach(), self.y_test)
        y = self.y_test.numpy()
        logits = logits.detach().double()
        if self.kind == "multiclass":
            probs = torch.softmax(logits, 1).numpy()
            pred = probs.argmax(1)
            if primary_only:
                return {"balanced_accuracy": M.balanced_accuracy(y, pred)}
            out = {"balanced_accuracy": M.balanced_accuracy(y, pred), "accuracy": M.accuracy(y, pred),
                   "macro_f1": M.macro_f1(y, pred, labels=range(self.num_classes)),
                   "ece": M.expected_calibration_error(probs, y, 15), **M.calibration_metrics(logits, self.y_test)}
            if self.long_tailed:
                counts = torch.bincount(self.y_train.long(), minlength=self.num_classes).numpy()
                out.update(M.group_accuracies(y, pred, M.frequency_groups(counts)))
            return out
        if self.kind == "binary":
            score = torch.sigmoid(logits[:, 0]) if family == "sigmoid" else torch.softmax(logits, 1)[:, 1]
            score = score.numpy()
            return {"average_precision": M.average_precision(y, score), "roc_auc": M.roc_auc(y, score)}
        scores = torch.sigmoid(logits).numpy()
        if self.kind == "multilabel":  # mean over the labels of each label's average precision
            per_class = [M.average_precision(y[:, c], scores[:, c]) for c in range(self.num_classes)]
        else:
            per_class = [M.average_precision((y == c).ravel(), scores[:, c].ravel()) for c in range(self.num_classes)]
        out = {"map": float(np.nanmean(per_class)) if not np.all(np.isnan(per_class)) else math.nan}
        if boxes is not None:
            out.update(box_metrics(boxes.detach().double(), self.boxes_test.double(), y, scores, self.num_classes))
        return out


class DenseNet(nn.Module):
    """Two 3x3 conv layers, a 1x1 classifier and, optionally, a box head (3x3 conv, 1x1)."""

    def __init__(self, channels: int, num_classes: int, box_channels: int = 0, width: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.classify = nn.Conv2d(width, num_classes, 1)
        self.box = (nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, box_channels, 1))
                    if box_channels else None)

    def forward(self, x):
        features = self.trunk(x)
        logits = self.classify(features)
        return logits if self.box is None else (logits, self.box(features))


def _sklearn():
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError:
        raise ImportError("this task needs scikit-learn: pip install 'polyfocal[experiments]'") from None
    return sklearn


def _standardize(x_train: np.ndarray, x_test: np.ndarray):
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0
    as_tensor = lambda a: torch.as_tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return as_tensor(x_train), as_tensor(x_test)


def _stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator):
    train, test = [], []
    for c in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(index))) if len(index) > 1 else 0
        test.append(index[:k])
        train.append(index[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digits_lt(imbalance: float = 50.0, test_per_class: int = 50, seed: int = 0) -> Task:
    """Digits 0-9 (8x8): class c keeps ``n_max * imbalance^(-c/9)`` train images; test is balanced."""
    if imbalance < 1:
        raise InputValueError(f"`imbalance` must be >= 1; got {imbalance}")
    data = _sklearn().datasets.load_digits()
    x, y = data.data.astype(np.float64) / 16.0, data.target
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in range(10)}
    n_max = min(len(p) for p in pools.values()) - test_per_class
    test = np.concatenate([p[:test_per_class] for p in pools.values()])
    train = np.concatenate([pools[c][test_per_class:test_per_class + max(1, int(n_max * imbalance ** (-c / 9)))]
                            for c in range(10)])
    x_train, x_test = _standardize(x[train], x[test])
    return Task("digits-lt", "multiclass", 10, x_train, torch.as_tensor(y[train]), x_test,
                torch.as_tensor(y[test]),
                f"sklearn digits, long-tailed train (imbalance {imbalance:g}), balanced test",
                epochs=30, batch_size=64, lr=1e-2, options={"imbalance": imbalance, "seed": seed})


def multilabel_toy(n_train: int = 1200, seed: int = 0) -> Task:
    """Mosaics of 2 x 2 digit tiles (:mod:`.mosaics`), each image with 1-4 of 10 labels, the labels long-tailed
    (label 9 twenty times rarer than label 0); a sigmoid head, mean average precision over the labels."""
    _at_least(n_train, 20, "multilabel-toy", "enough images for every label to appear")
    data = _sklearn().datasets.load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))
    half = len(order) // 2  # train and test mosaics from disjoint digit images
    images, labels = data.data / 16.0, data.target
    x_train, y_train = digit_mosaics(images[order[:half]], labels[order[:half]], n_train, rng)
    x_test, y_test = digit_mosaics(images[order[half:]], labels[order[half:]], max(n_train // 2, 10), rng)
    x_train, x_test = _standardize(x_train, x_test)
    return Task("multilabel-toy", "multilabel", 10, x_train, torch.as_tensor(y_train, dtype=torch.float32), x_test,
                torch.as_tensor(y_test, dtype=torch.float32),
                "16x16 mosaics of 2x2 sklearn digit tiles (30% blank), the digits present as labels (10, long-tailed)",
                epochs=30, batch_size=64, lr=1e-2, options={"n_train": n_train, "seed": seed})


def _at_least(n_train: int, minimum: int, task: str, why: str) -> None:
    if n_train < minimum:
        raise InputValueError(f"`--n-train` must be >= {minimum} for task {task!r} ({why}); got {n_train}")


def tabular_imbalanced(n_train: int = 4000, seed: int = 0) -> Task:
    """``make_classification`` with 20 features, weights [0.99, 0.01]; a third as many test rows."""
    _at_least(n_train, 200, "tabular-imbalanced", "1% positives: a split needs at least 2")
    sklearn = _sklearn()
    n_test = max(n_train // 3, 2)
    x, y = sklearn.datasets.make_classification(
        n_samples=n_train + n_test, n_features=20, n_informative=6, n_redundant=4, weights=[0.99, 0.01],
        class_sep=1.0, flip_y=0.0, random_state=seed)
    train, test = sklearn.model_selection.train_test_split(
        np.arange(len(y)), test_size=n_test, stratify=y, random_state=seed)
    x_train, x_test = _standardize(x[train], x[test])
    return Task("tabular-imbalanced", "binary", 2, x_train, torch.as_tensor(y[train]), x_test,
                torch.as_tensor(y[test]), "make_classification, 20 features, 1% positives",
                epochs=20, batch_size=128, lr=5e-3, options={"n_train": n_train, "seed": seed})


def _shape(kind: int, s: int) -> torch.Tensor:
    """An ``s x s`` mask: a filled square (0), a ring (1) or a plus with arms ``s - 2`` wide (2)."""
    mask = torch.ones(s, s)
    if kind == 1:
        mask[1:-1, 1:-1] = 0
    elif kind == 2:
        mask[[0, 0, -1, -1], [0, -1, 0, -1]] = 0
    return mask


def _dense_images(n: int, size: int, generator: torch.Generator):
    """1-channel noise images with 0-2 objects each, 3 or 4 pixels wide: square, ring or plus (classes 0-2).

    Returns images ``(n, 1, size, size)``, labels ``(n, size, size)`` (3 = background; every
    location in an object's box has its class, a later object overwriting an earlier one)
    and box targets ``(n, 4, size, size)``: each location's distances to its object's left,
    top, right and bottom edges in pixels (0 on background).
    """
    images = 0.3 * torch.randn(n, 1, size, size, generator=generator)
    labels = torch.full((n, size, size), 3, dtype=torch.long)
    boxes = torch.zeros(n, 4, size, size)
    centre = torch.arange(size, dtype=torch.float32) + 0.5
    for i in range(n):
        for _ in range(int(torch.randint(0, 3, (1,), generator=generator))):
            c, s = int(torch.randint(0, 3, (1,), generator=generator)), int(torch.randint(3, 5, (1,), generator=generator))
            r, q = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=generator))
            images[i, 0, r:r + s, q:q + s] += _shape(c, s)
            labels[i, r:r + s, q:q + s] = c
            rows, cols = centre[r:r + s, None].expand(s, s), centre[None, q:q + s].expand(s, s)
            boxes[i, :, r:r + s, q:q + s] = torch.stack([cols - q, rows - r, q + s - cols, r + s - rows])
    return images, labels, boxes


def dense_toy(n_train: int = 256, size: int = 32, seed: int = 0) -> Task:
    """Per-pixel classes of small objects (3 shapes, ~1% of locations) and their box edges; sigmoid head."""
    _at_least(n_train, 4, "dense-toy", "a batch of images and half as many to test")
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train, b_train = _dense_images(n_train, size, generator)
    x_test, y_test, b_test = _dense_images(max(n_train // 2, 1), size, generator)
    return Task("dense-toy", "dense", 3, x_train, y_train, x_test, y_test,
                f"{size}x{size} noise images with 3-4 px squares/rings/pluses; labels per pixel, 3 = background",
                epochs=20, batch_size=32, lr=1e-2, options={"n_train": n_train, "size": size, "seed": seed},
                boxes_train=b_train, boxes_test=b_test)


def seg_toy(n_train: int = 256, size: int = 32, seed: int = 0) -> Task:
    """dense-toy's images as a segmentation task (:mod:`.segmentation`): class 0 the background; a softmax or
    region loss on a fully convolutional net; Dice and IoU of the foreground classes."""
    _at_least(n_train, 4, "seg-toy", "a batch of images and half as many to test")
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = seg_images(n_train, size, generator, _dense_images)
    x_test, y_test = seg_images(max(n_train // 2, 1), size, generator, _dense_images)
    share = sum(foreground_share(y_train, 4))
    return Task("seg-toy", "segmentation", 4, x_train, y_train, x_test, y_test,
                f"{size}x{size} noise images with 3-4 px squares/rings/pluses (classes 1-3, {100 * share:.1f}% of "
                f"the training pixels); class 0 the background", epochs=20, batch_size=32, lr=1e-2,
                options={"n_train": n_train, "size": size, "seed": seed})


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _read_images(path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image folder ``path/CLASS/*.png``: pixels resized to ``size x size`` RGB in [0, 1], flattened."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image folders need Pillow: pip install 'polyfocal[experiments]'") from None
    x, labels = [], []
    for label in sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))):
        folder = os.path.join(path, label)
        for name in sorted(os.listdir(folder)):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                pixels = _read_image(os.path.join(folder, name), size)
                x.append(np.asarray(pixels, dtype=np.float64).ravel() / 255.0)
                labels.append(label)
    if not x:
        raise InputValueError(f"`--data` folder {path!r} has no images in class subfolders (path/CLASS/image.png)")
    return np.stack(x), np.array(labels)


def _read_image(path: str, size: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as error:
        raise InputValueError(f"`--data` image {path!r} cannot be read: {error}") from None


def _read_table(path: str, label_column: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Features and raw labels from a ``.npz`` (arrays ``X``, ``y``) or a ``.csv`` with a header."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        try:
            arrays = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:  # not an .npz, or one holding pickled objects
            raise InputValueError(f"`--data` {path!r} cannot be read as .npz: {error}") from None
        keys = {k.lower(): k for k in arrays.files}
        if "x" not in keys or "y" not in keys:
            raise InputValueError(f"`--data` {path!r} must hold arrays 'X' and 'y'; got {arrays.files}")
        x, raw = np.asarray(arrays[keys["x"]], dtype=np.float64), np.asarray(arrays[keys["y"]])
        return x.reshape(len(x), -1), raw
    if extension == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            raise InputValueError(f"`--data` {path!r} is empty; expected a header row and data rows")
        header, rows = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
        column = label_column or ("label" if "label" in header else header[-1])
        if column not in header:
            raise InputValueError(f"`--label-column` {column!r} is not a column of {path!r}; "
                                  f"columns: {', '.join(header)}")
        j = header.index(column)
        raw = np.array([r[j].strip() for r in rows])
        try:
            x = np.array([[float(v) for k, v in enumerate(r) if k != j] for r in rows], dtype=np.float64)
        except ValueError as error:
            raise InputValueError(f"`--data` {path!r}: feature columns must be numbers ({error})") from None
        return x, raw
    raise InputValueError(f"`--data` must be a .csv or .npz file or an image folder; got {path!r}")


def load_data(path: str, label_column: str | None = None, seed: int = 0, test_fraction: float = 0.3,
              image_size: int = 32) -> Task:
    """A user's classification data: ``.npz`` (arrays ``X``, ``y``), ``.csv`` with a header, or an image folder.

    The CSV's label column is ``label_column`` (default: ``label`` if present, else the last
    column); other columns must be numbers. An image folder holds one subfolder per class
    (``path/cat/1.png``); images are resized to ``image_size x image_size`` RGB and
    flattened, so the model is the same MLP (a baseline, not a vision model). Labels may be
    any strings; they are mapped to 0..K-1 in sorted order (for two classes the second is
    positive). A stratified ``test_fraction`` is held out; features are standardised with
    the train statistics.

    Raises:
        ValueError: missing file, unknown extension, missing column, non-numeric feature,
            an image folder without images.
    """
    if os.path.isdir(path):
        if label_column:
            raise InputValueError("`--label-column` applies to a CSV file, not an image folder")
        x, raw = _read_images(path, image_size)
    elif os.path.isfile(path):
        x, raw = _read_table(path, label_column)
    else:
        raise InputValueError(f"`--data` file or folder not found: {path!r}")
    if len(x) != len(raw) or len(x) < 4:
        raise InputValueError(f"`--data` {path!r}: need >= 4 rows and as many labels as rows; "
                              f"got X {x.shape}, y {raw.shape}")
    classes, y = np.unique(raw, return_inverse=True)
    if len(classes) < 2:
        raise InputValueError(f"`--data` {path!r}: labels must have at least 2 classes; got {classes.tolist()}")
    train, test = _stratified_split(y, test_fraction, np.random.default_rng(seed))
    x_train, x_test = _standardize(x[train], x[test])
    kind = "binary" if len(classes) == 2 else "multiclass"
    name = os.path.basename(os.path.normpath(path))
    return Task(f"data:{name}", kind, len(classes), x_train, torch.as_tensor(y[train]),
                x_test, torch.as_tensor(y[test]),
                f"user data {name}: {x.shape[1]} features, classes {classes.tolist()}",
                epochs=30, batch_size=64, lr=5e-3,
                options={"path": os.path.abspath(path), "classes": classes.tolist(), "seed": seed})


#: built-in task name -> factory, and the options each factory takes
TASKS = {"digits-lt": (digits_lt, ("imbalance", "seed")),
         "tabular-imbalanced": (tabular_imbalanced, ("n_train", "seed")),
         "dense-toy": (dense_toy, ("n_train", "seed")),
         "multilabel-toy": (multilabel_toy, ("n_train", "seed")),
         "seg-toy": (seg_toy, ("n_train", "seed"))}


def make_task(name: str, **options) -> Task:
    """A built-in task by name; options that are ``None`` take the task's defaults.

    Raises:
        ValueError: unknown task, or an option the task does not take (named as the CLI flag).
    """
    if name not in TASKS:
        raise InputValueError(f"`--task` names an unknown task {name!r}; available: {', '.join(TASKS)}")
    factory, accepted = TASKS[name]
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in accepted:
            raise InputValueError(f"`--{key.replace('_', '-')}` does not apply to task {name!r}")
    return factory(**given)
