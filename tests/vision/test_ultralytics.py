"""Ultralytics YOLO with polyfocal's losses, against Ultralytics' own criterion (vision environment only)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # no connectivity probe or downloads (read at import)
pytest.importorskip("ultralytics")

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.cfg import DEFAULT_CFG, get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.loss import DFLoss as UltralyticsDFLoss  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss  # noqa: E402

from polyfocal.integrations.ultralytics import DFLoss, ElementwiseLoss, patch_criterion, use_loss  # noqa: E402

pytestmark = pytest.mark.vision
CLASSES = 3


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=CLASSES, verbose=False)
    model.args = get_cfg(DEFAULT_CFG)
    return model.train()


def batch(images: int = 2, size: int = 64):
    """A batch as Ultralytics' dataloader gives it: images, and per box its image, class and (cx, cy, w, h)."""
    generator = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[0.3, 0.3, 0.4, 0.3], [0.6, 0.7, 0.5, 0.4], [0.5, 0.5, 0.8, 0.8]])
    return {"img": torch.rand(images, 3, size, size, generator=generator),
            "batch_idx": torch.tensor([0.0, 0.0, 1.0]), "cls": torch.tensor([[0.0], [2.0], [1.0]]),
            "bboxes": boxes}


def loss_and_gradients(model, criterion):
    model.zero_grad()
    data = batch()
    total, items = criterion(model(data["img"]), data)
    total.sum().backward()
    return items, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("replace_dfl", [False, True])
def test_bce_through_polyfocal_is_ultralytics_own_loss(detector, replace_dfl):
    """sigmoid focal loss with gamma = 0 and no alpha is BCE: the same loss items and parameter gradients
    as YOLO's own criterion (and so is polyfocal's DFL in place of YOLO's)."""
    theirs, their_grads = loss_and_gradients(detector, v8DetectionLoss(detector))
    ours_criterion = patch_criterion(v8DetectionLoss(detector), "sigmoid_focal_loss", gamma=0.0, alpha=None,
                                     replace_dfl=replace_dfl)
    assert isinstance(ours_criterion.bce, ElementwiseLoss)
    assert isinstance(ours_criterion.bbox_loss.dfl_loss, DFLoss if replace_dfl else UltralyticsDFLoss)
    ours, our_grads = loss_and_gradients(detector, ours_criterion)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    assert float(theirs["cls_loss"]) > 0
    assert len(our_grads) == len(their_grads) > 0
    # through the whole network: fp32 rounding of the score gradients, carried back through every layer
    difference = torch.cat([(a - b).flatten() for a, b in zip(our_grads, their_grads)]).norm()
    assert difference <= 1e-5 * torch.cat([b.flatten() for b in their_grads]).norm()


def test_the_elementwise_loss_is_bce_on_yolo_scores():
    """On the assigner's soft scores (zero for most anchors, an alignment score in (0, 1) for a few), element
    by element, value and gradient, in fp32."""
    torch.manual_seed(4)
    logits = (torch.randn(2, 336, CLASSES) * 4).requires_grad_()
    scores = torch.zeros(2, 336, CLASSES)
    scores[0, :9, 1] = torch.rand(9)
    ours = ElementwiseLoss("sigmoid_focal_loss", gamma=0.0, alpha=None)(logits, scores)
    theirs = torch.nn.BCEWithLogitsLoss(reduction="none")(logits, scores)
    torch.testing.assert_close(ours, theirs)
    weights = torch.rand_like(theirs)
    torch.testing.assert_close(torch.autograd.grad((ours * weights).sum(), logits)[0],
                               torch.autograd.grad((theirs * weights).sum(), logits)[0])


def test_focal_changes_the_classification_term_only(detector):
    theirs, _ = loss_and_gradients(detector, v8DetectionLoss(detector))
    ours, _ = loss_and_gradients(detector, patch_criterion(v8DetectionLoss(detector), "sigmoid_focal_loss"))
    torch.testing.assert_close(ours["box_loss"], theirs["box_loss"])
    torch.testing.assert_close(ours["dfl_loss"], theirs["dfl_loss"])
    assert float(ours["cls_loss"]) < 0.5 * float(theirs["cls_loss"])  # alpha and the modulator shrink it


def test_dfl_equals_ultralytics_dfl():
    torch.manual_seed(2)
    reg_max = 16
    pred = torch.randn(20 * 4, reg_max, dtype=torch.float64, requires_grad=True)
    target = torch.rand(20, 4, dtype=torch.float64) * (reg_max - 1.01)  # as YOLO's bbox2dist clamps them
    target[0] = torch.tensor([0.0, 3.0, reg_max - 1.01, 7.5])
    ours = DFLoss(reg_max)(pred, target.clone())
    (grad_ours,) = torch.autograd.grad(ours.sum(), pred)
    theirs = UltralyticsDFLoss(reg_max)(pred, target.clone())
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), pred)
    assert ours.shape == theirs.shape == (20, 1)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)
    untouched = target.clone()
    DFLoss(reg_max)(pred, untouched)
    assert torch.equal(untouched, target)


def test_a_loss_of_another_family_is_refused_before_anything_changes(detector):
    criterion = v8DetectionLoss(detector)
    for loss, family in [("focal_loss", "softmax"), ("distribution_focal_loss", "distribution")]:
        with pytest.raises(ValueError, match=rf"`loss` must be element-wise, of the sigmoid family.*'{loss}' is {family}"):
            patch_criterion(criterion, loss)
    with pytest.raises(ValueError, match="give no `reduction`"):
        patch_criterion(criterion, "qfl", reduction="mean")
    with pytest.raises(ValueError, match="`criterion` must be Ultralytics' v8DetectionLoss"):
        patch_criterion(torch.nn.BCEWithLogitsLoss(), "qfl")
    with pytest.raises(ValueError, match="`model` must be an Ultralytics YOLO model"):
        use_loss(detector, "qfl")
    assert isinstance(criterion.bce, torch.nn.BCEWithLogitsLoss)


def write_dataset(root, images: int = 4, size: int = 64):
    """A tiny YOLO dataset on disk: images with a bright box each, their labels and data.yaml."""
    from PIL import Image

    folder, labels = root / "images" / "train", root / "labels" / "train"
    folder.mkdir(parents=True)
    labels.mkdir(parents=True)
    generator = torch.Generator().manual_seed(3)
    for i in range(images):
        pixels = (torch.rand(size, size, 3, generator=generator) * 60).to(torch.uint8)
        x0, y0 = 8 + 4 * i, 12 + 2 * i
        pixels[y0:y0 + 24, x0:x0 + 20] = 220
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
        (labels / f"{i}.txt").write_text(f"{i % CLASSES} {(x0 + 10) / size} {(y0 + 12) / size} {20 / size} {24 / size}\n")
    names = "".join(f"  {c}: c{c}\n" for c in range(CLASSES))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{names}")
    return root / "data.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("loss, params", [("quality_focal_loss", {"beta": 2.0}),
                                          ("sigmoid_focal_loss", {"gamma": 2.0, "alpha": 0.25})])
def test_an_offline_epoch_trains_with_the_loss_and_writes_weights(tmp_path, loss, params):
    data = write_dataset(tmp_path / "data")
    model = use_loss(YOLO("yolov8n.yaml"), loss, replace_dfl=loss == "quality_focal_loss", **params)
    seen = []  # the classification loss in place at each training batch
    model.add_callback("on_train_batch_end", lambda trainer: seen.append(type(unwrap(trainer.model).criterion.bce)))
    model.train(data=str(data), epochs=1, imgsz=64, batch=2, device="cpu", workers=0, plots=False, amp=False,
                project=str(tmp_path / "runs"), name="run", exist_ok=True, verbose=False)
    criterion = unwrap(model.trainer.model).criterion
    assert isinstance(criterion.bce, ElementwiseLoss)
    assert type(criterion.bce.loss).__name__ == {"quality_focal_loss": "QualityFocalLoss",
                                                 "sigmoid_focal_loss": "SigmoidFocalLoss"}[loss]
    assert isinstance(criterion.bbox_loss.dfl_loss, DFLoss if loss == "quality_focal_loss" else UltralyticsDFLoss)
    weights = tmp_path / "runs" / "run" / "weights" / "last.pt"
    assert weights.is_file()
    assert seen and set(seen) == {ElementwiseLoss}
    assert all(torch.isfinite(value).all() for value in model.trainer.tloss.values())
    reloaded = YOLO(str(weights))  # a plain YOLO checkpoint: loading it needs no polyfocal
    assert type(reloaded.model) is DetectionModel


def unwrap(model):
    return getattr(model, "module", model)
