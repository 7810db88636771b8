"""One rank of the 2-process gloo test in test_ghm.py (not collected by pytest).

    python _ddp_ghm_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Joins a gloo process group through a FileStore (no TCP port to pick; gloo itself is held
to the loopback interface by GLOO_SOCKET_IFNAME, set by the test), takes rank's slice of
every batch in DATA_FILE along dim 0, runs the GHM losses with ``distributed`` left at its
default (auto-detected), and saves each loss, the gradient w.r.t. the rank's inputs and
the Modules' buffers to OUT_FILE.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import polyfocal as pf
from _gloo import serve_rank


def _slice(t, rank, world):
    h = t.shape[0] // world
    return t[rank * h:(rank + 1) * h]


def _loss_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def ghm_cases(part: dict) -> dict:
    """Each GHM loss's value and gradient on every batch of ``part`` (this rank's slices here; the whole
    batches in test_ghm's single-process run), and the Modules' buffers after them."""
    # Stateless GHM-C on each step's batch (index targets with ignore_index, weights with zeros).
    out = {"ghm_c_loss": [_loss_and_grad(pf.ghm_c_loss, x, t, weight=w, bins=7) for x, t, w in part["c"]],
           "ghm_r_loss": [_loss_and_grad(pf.ghm_r_loss, p, t, weight=w, mu=0.1, bins=7) for p, t, w in part["r"]]}
    cmod = pf.GHMCLoss(bins=7, momentum=0.75)
    out["GHMCLoss"] = [_loss_and_grad(cmod, x, t, w) for x, t, w in part["c"]]
    out["GHMCLoss_buffers"] = (cmod.counts.clone(), cmod.steps.clone())
    cmod_nb = pf.GHMCLoss(bins=7, momentum=0.75, bias_correction=False, reduction="sum")
    out["GHMCLoss_sum_nobc"] = [_loss_and_grad(cmod_nb, x, t, w) for x, t, w in part["c"]]
    rmod = pf.GHMRLoss(bins=7, momentum=0.75, mu=0.1)
    out["GHMRLoss"] = [_loss_and_grad(rmod, p, t, w) for p, t, w in part["r"]]
    out["GHMRLoss_buffers"] = (rmod.counts.clone(), rmod.steps.clone())
    return out


def run(rank: int, data: dict) -> dict:
    world = dist.get_world_size()
    part = {k: [tuple(_slice(t, rank, world) for t in batch) for batch in v] for k, v in data.items()}
    out = ghm_cases(part)
    # distributed=False inside the group: this rank's slice alone.
    x, t, w = part["c"][0]
    out["local_only"] = pf.ghm_c_loss(x, t, weight=w, bins=7, distributed=False)
    return out


if __name__ == "__main__":
    serve_rank(run)
