"""One rank of the 2-process gloo test of EQLv2Loss and EqualizedFocalLoss in test_gradient_ratio.py (not
collected).

    python _gradient_ratio_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Takes its half of every batch (rows), runs each Module over the batches with reduction="sum" and saves, per
batch, the loss and the gradient of its logits, then the Module's statistics.
"""

from __future__ import annotations

import torch

import polyfocal as pf
from _gloo import serve_rank


def run(rank: int, data: dict) -> dict:
    out = {}
    for name, module in (("eqlv2", pf.EQLv2Loss(reduction="sum")), ("efl", pf.EqualizedFocalLoss(4, reduction="sum"))):
        steps = []
        for x, t in data["batches"]:
            half = x.shape[0] // 2
            part = slice(rank * half, (rank + 1) * half)
            logits = x[part].clone().requires_grad_()
            loss = module(logits, t[part])
            steps.append((loss.detach(), torch.autograd.grad(loss, logits)[0]))
        out[name] = (steps, module.positive_gradient.clone(), module.negative_gradient.clone())
    return out


if __name__ == "__main__":
    serve_rank(run)
