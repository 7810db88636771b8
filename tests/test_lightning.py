"""polyfocal.integrations.lightning against the real lightning.Trainer on CPU: accumulating 4 micro-batches
of 2 takes the same SGD step as one batch of 8 when the micro-batches hold uneven numbers of tokens, in one
process and in 2 DDP processes (gloo)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from _gloo import needs_gloo, run_ranks

lightning = pytest.importorskip("lightning")

import polyfocal as pf  # noqa: E402
from polyfocal.integrations.lightning import WindowNormalizer  # noqa: E402

CLASSES, FEATURES = 5, 6


def windows():
    """8 sequences of 10 positions with 2 to 10 labelled ones (the rest -100)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 10, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (8, 10), generator=g)
    for i in range(8):
        y[i, 2 + (i * 3) % 9:] = -100
    return [{"x": x[i], "labels": y[i]} for i in range(8)]


class Tagger(lightning.LightningModule):
    def __init__(self, loss, params, reduction):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(FEATURES, CLASSES)
        self.loss, self.params, self.reduction = loss, params, reduction

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["x"]).flatten(0, 1)
        return pf.get_loss_function(self.loss)(logits, batch["labels"].flatten(), reduction=self.reduction,
                                                **self.params)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def one_step(loss, params, batch, accumulation, callbacks=None, reduction="sum", strategy="auto", devices=1):
    """The parameters after one optimizer step (with :class:`WindowNormalizer` on token counts by default)."""
    model = Tagger(loss, params, reduction)
    callbacks = [WindowNormalizer(tokens)] if callbacks is None else callbacks
    trainer = lightning.Trainer(max_steps=1, accumulate_grad_batches=accumulation, accelerator="cpu", devices=devices,
                                strategy=strategy, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader(windows(), batch_size=batch, shuffle=False))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def tokens(batch):
    return (batch["labels"] != -100).sum()


@pytest.mark.slow
@pytest.mark.parametrize("loss, params", [("cross_entropy", {}), ("focal_loss", {"gamma": 2.0}),
                                          ("poly1_cross_entropy", {"epsilon": 1.0})])
def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8(loss, params):
    whole = one_step(loss, params, 8, 1)
    accumulated = one_step(loss, params, 2, 4)
    start = {name: p.detach() for name, p in Tagger(loss, params, "sum").named_parameters()}
    assert max(float((whole[n] - start[n]).abs().max()) for n in whole) > 1e-3
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6)
    # and that step is the batch's mean over its tokens, as one batch of 8 with reduction="mean" takes it
    mean = one_step(loss, params, 8, 1, [], reduction="mean")
    for name in whole:
        torch.testing.assert_close(whole[name], mean[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lightnings_own_accumulation_of_means_differs():
    mean = one_step("cross_entropy", {}, 8, 1, [], reduction="mean")
    accumulated = one_step("cross_entropy", {}, 2, 4, [], reduction="mean")
    assert max(float((mean[n] - accumulated[n]).abs().max()) for n in mean) > 1e-4


WORKER = Path(__file__).with_name("_lightning_ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("loss, params", [("focal_loss", {"gamma": 2.0})])
def test_two_ddp_ranks_accumulating_2_micro_batches_of_2_equal_one_batch_of_8(loss, params, tmp_path):
    """Lightning's own DDP (gloo, 2 processes, its distributed sampler): each rank sees 4 of the 8 sequences,
    with different token counts, and the step equals one process's batch of 8."""
    ranks = run_ranks(WORKER, {"port": free_port(), "loss": loss, "params": params}, tmp_path, timeout=180.0)
    whole = one_step(loss, params, 8, 1)
    assert [seen["world_size"] for _, seen in ranks] == [2, 2]
    assert ranks[0][1]["tokens"] != ranks[1][1]["tokens"]  # uneven micro-batches and ranks
    for rank_params, _ in ranks:
        for name in whole:
            torch.testing.assert_close(rank_params[name], whole[name], rtol=1e-5, atol=1e-6)
