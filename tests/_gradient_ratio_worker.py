"""One rank of the 2-process gloo test of the Modules with per-class statistics (EQLv2Loss, EqualizedFocalLoss,
SeesawLoss) in test_gradient_ratio.py (not collected).

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
    for name, module in (("eqlv2", pf.EQLv2Loss(reduction="sum")), ("efl", pf.EqualizedFocalLoss(4, reduction="sum")),
                         ("seesaw", pf.SeesawLoss(4, reduction="sum"))):
        steps = []
        for x, t in data["softmax_batches" if name == "seesaw" else "batches"]:
            half = x.shape[0] // 2
            part = slice(rank * half, (rank + 1) * half)
            logits = x[part].clone().requires_grad_()
            loss = module(logits, t[part])
            steps.append((loss.detach(), torch.autograd.grad(loss, logits)[0]))
        out[name] = (steps, *(b.clone() for b in module.buffers() if b.dtype == torch.float64 and b.ndim == 1))
    return out


if __name__ == "__main__":
    serve_rank(run)
