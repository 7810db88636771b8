"""``seg-toy``, the segmentation task: noise images with small structures (squares, rings and pluses of 3-4
pixels, zero to two per image: about 1.5% of the pixels foreground), a softmax head with class 0 the
background, scored by each foreground class's Dice and IoU over the whole test set (torchmetrics)."""

from __future__ import annotations

import torch

#: the task's metrics, the headline first: mean over the foreground classes
METRICS = ("dice", "iou")


def seg_images(n: int, size: int, generator: torch.Generator, make) -> tuple[torch.Tensor, torch.Tensor]:
    """``make(n, size, generator)``'s dense-toy images and labels with the background as class 0 and the
    three shapes as classes 1-3."""
    images, labels, _ = make(n, size, generator)
    return images, (labels + 1) % 4


def foreground_share(labels: torch.Tensor, num_classes: int) -> list[float]:
    """Each foreground class's share of the pixels."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes).double()
    return [round(float(v), 5) for v in counts[1:] / labels.numel()]


def segmentation_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Dice and IoU of the arg-max prediction, each foreground class's over all its test pixels (the test set
    as one image, so that a class absent from an image does not count as a perfect or a failed one), and
    their means over the foreground classes."""
    from torchmetrics.functional.segmentation import dice_score, mean_iou

    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    pred, target = pred.reshape(1, -1, pred.shape[-1]), labels.reshape(1, -1, labels.shape[-1])
    dice = dice_score(pred, target, num_classes, include_background=False, average="none", input_format="index")[0]
    iou = mean_iou(pred, target, num_classes, include_background=False, per_class=True, input_format="index")[0]
    out = {"dice": float(dice.nanmean()), "iou": float(iou.nanmean())}
    out.update({f"dice_{c + 1}": float(d) for c, d in enumerate(dice)})
    return out
