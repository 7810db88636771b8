"""One rank of the 2-process gloo test of vocab_parallel_linear_loss in test_linear.py (not collected).

    python _vocab_parallel_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Holds its shard of the head (rank 0 the first ``split`` classes, rank 1 the rest: uneven on
purpose), runs each case of DATA_FILE and saves the loss and the gradients of hidden, of its
shard of the weight and of the bias.
"""

from __future__ import annotations

import torch

from _gloo import serve_rank
from polyfocal.vocab_parallel import vocab_parallel_linear_loss


def run(rank: int, data: dict) -> list:
    bounds = [0, data["split"], data["weight"].shape[0]]
    rows = slice(bounds[rank], bounds[rank + 1])
    out = []
    for name, kwargs, reduction in data["cases"]:
        h = data["hidden"].clone().requires_grad_()
        w, b = (data[k][rows].clone().requires_grad_() for k in ("weight", "bias"))
        loss = vocab_parallel_linear_loss(h, w, data["target"], vocab_start=bounds[rank],
                                          num_classes=data["weight"].shape[0], loss=name, head_bias=b,
                                          chunk_size=5, reduction=reduction, **kwargs)
        upstream = data["upstream"] if reduction == "none" else torch.ones(())
        out.append((loss.detach(), *torch.autograd.grad((loss * upstream).sum(), (h, w, b))))
    return out


if __name__ == "__main__":
    serve_rank(run)
