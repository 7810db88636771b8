"""PyTorch Lightning: a loss normalised over the whole gradient-accumulation window and every rank.

    from polyfocal.integrations.lightning import WindowNormalizer
    trainer = lightning.Trainer(accumulate_grad_batches=4,
                                callbacks=[WindowNormalizer(lambda batch: (batch["labels"] != -100).sum())])
    # in training_step: return pf.focal_loss(logits, labels, reduction="sum")

Lightning divides each micro-batch's loss by ``accumulate_grad_batches`` and DDP averages gradients
over ranks, so a per-micro-batch mean weighs a token of a short micro-batch more than one of a long
one. With ``training_step`` returning the micro-batch's *sum*, :class:`WindowNormalizer` counts
what each batch holds (tokens, non-ignored examples, positives) and, before the optimizer step,
rescales the accumulated gradients so that they are those of the window's sum divided by the
window's count over all ranks: the same step as one batch of the whole window.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ._versions import require

lightning = require("lightning", "2.0", "lightning")

__all__ = ["WindowNormalizer"]


class WindowNormalizer(lightning.pytorch.Callback):
    """Rescales the accumulated gradients to the window's sum over the window's count (all-reduced).

    Args:
        count: ``batch -> number`` of what the loss's sum runs over in this batch (for class
            indices, ``(labels != ignore_index).sum()``; for dense detection, the positives).
    """

    def __init__(self, count: Callable[[Any], Any]):
        super().__init__()
        self.count = count
        self._window = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        counted = torch.as_tensor(self.count(batch), dtype=torch.float64, device=pl_module.device)
        self._window = counted if self._window is None else self._window + counted

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._window is None:
            raise RuntimeError("WindowNormalizer counted no batch before this optimizer step; it needs "
                               "automatic optimization (training_step returning the batch's summed loss)")
        total = trainer.strategy.reduce(self._window, reduce_op="sum") if trainer.world_size > 1 else self._window
        scale = trainer.accumulate_grad_batches * trainer.world_size / total.clamp_min(1)
        for parameter in pl_module.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale.to(parameter.grad.dtype))
        self._window = None
