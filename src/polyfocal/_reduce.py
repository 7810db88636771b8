"""The one reduction helper: ``none``, ``sum``, ``mean`` and the ``normalizer`` override."""

from __future__ import annotations

import torch
from torch import Tensor


def reduce_loss(loss: Tensor, reduction: str, count: Tensor | float, normalizer=None) -> Tensor:
    """Reduce a per-element loss.

    ``mean`` divides the sum by ``count`` (the loss's documented count: the weighted
    number of non-ignored examples). An empty or all-ignored batch has a count of 0
    and a sum of 0; it gives 0 with zero gradients, not NaN. A given ``normalizer``
    replaces the count as it is (divide by ``num_pos.clamp(min=1)`` yourself if
    that is what you want).
    """
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if normalizer is not None:
        return total / normalizer
    if not isinstance(count, Tensor):
        return total / count if count > 0 else total
    return total / torch.where(count > 0, count, torch.ones_like(count))
