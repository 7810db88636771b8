"""One rank of the 2-process gloo test of vocab_parallel_linear_distillation_loss in test_distill.py (not
collected).

    python _distill_parallel_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Holds its shard of both heads (rank 0 the first ``split`` classes, rank 1 the rest: uneven on purpose),
runs each case of DATA_FILE and saves the loss and the gradients of the student's hidden states, of its
shard of the student's head and of its bias.
"""

from __future__ import annotations

import torch

from _gloo import serve_rank
from polyfocal import vocab_parallel_linear_distillation_loss


def run(rank: int, data: dict) -> list:
    (hs, ws, bs), (ht, wt, bt) = data["student"], data["teacher"]
    bounds = [0, data["split"], ws.shape[0]]
    rows = slice(bounds[rank], bounds[rank + 1])
    out = []
    for kwargs in data["cases"]:
        h = hs.clone().requires_grad_()
        w, b = (t[rows].clone().requires_grad_() for t in (ws, bs))
        loss = vocab_parallel_linear_distillation_loss(h, w, ht, wt[rows], data["target"], vocab_start=bounds[rank],
                                                       num_classes=ws.shape[0], student_bias=b, teacher_bias=bt[rows],
                                                       chunk_size=4, **kwargs)
        upstream = data["upstream"] if kwargs.get("reduction") == "none" else torch.ones((), dtype=loss.dtype)
        out.append((loss.detach(), *torch.autograd.grad((loss * upstream).sum(), (h, w, b))))
    return out


if __name__ == "__main__":
    serve_rank(run)
