"""The one reduction helper: ``none``, ``sum``, ``mean`` and the ``normalizer`` override.

Every engine reduces the same way: the summed loss times a *scale*, 1 for ``sum``, and for
``mean`` one over the loss's documented count (the weighted number of non-ignored examples)
or over the given ``normalizer``. An empty or all-ignored batch has a count of 0 and a sum
of 0; it gives 0 with zero gradients, not NaN. A given ``normalizer`` is used as it is
(pass ``num_pos.clamp(min=1)`` yourself if that is what you want).
"""

from __future__ import annotations

import torch
from torch import Tensor


def reduction_scale(reduction: str, count, normalizer, like: Tensor) -> Tensor:
    """The factor applied to the summed loss (and to its gradient), as a 0-d tensor like ``like``."""
    if reduction != "mean":
        return torch.ones((), dtype=like.dtype, device=like.device)
    if normalizer is not None:
        return 1 / torch.as_tensor(normalizer, dtype=like.dtype, device=like.device)
    if not isinstance(count, torch.Tensor):  # a number of rows known on the host: one op, not four
        return torch.scalar_tensor(1.0 / count if count > 0 else 1.0, dtype=like.dtype, device=like.device)
    count = count.to(like.dtype)
    return torch.where(count > 0, count, 1.0).reciprocal()


def reduce_loss(loss: Tensor, reduction: str, scale: Tensor) -> Tensor:
    return loss if reduction == "none" else loss.sum() * scale
