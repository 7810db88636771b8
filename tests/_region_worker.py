"""One rank of the 2-process gloo test of the region losses' whole-batch sums in test_region.py (not
collected); ``run(None, data)`` is the one-process run on the whole batch.

    python _region_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Each rank takes its half of the images through a 1x1 convolution into each loss with ``batch=True`` and
saves the loss and the gradient of the convolution's weight, with the engine ``data["backend"]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import polyfocal as pf
from _gloo import serve_rank

LOSSES = {
    "dice": lambda x, t: pf.dice_loss(x, t, batch=True),
    "focal_tversky": lambda x, t: pf.focal_tversky_loss(x, t, batch=True, include_background=False),
    "dice_focal": lambda x, t: pf.dice_focal_loss(x, t, batch=True, activation="sigmoid"),
    "unified": lambda x, t: pf.unified_focal_loss(x, t, batch=True),
}


def run(rank: int | None, data: dict) -> dict:
    x, labels = data["x"], data["labels"]
    if rank is not None:
        half = x.shape[0] // 2
        x, labels = x[rank * half:(rank + 1) * half], labels[rank * half:(rank + 1) * half]
    out = {}
    for name, loss_of in LOSSES.items():
        weight = data["conv"].clone().requires_grad_()
        with pf.use_backend(data["backend"]):  # the sums' gradients by autograd or written out
            loss = loss_of(F.conv2d(x, weight), labels)
            out[name] = (loss.detach(), torch.autograd.grad(loss, weight)[0])
    return out


if __name__ == "__main__":
    serve_rank(run)
