"""AdaFocal (Ghosh, Schaaf and Gormley, NeurIPS 2022, "AdaFocal: Calibration-aware Adaptive Focal Loss").

Focal loss whose gamma is set per bin of ``p_t`` from the calibration measured on validation data,
and which switches to the inverse focal loss ``-(1+p_t)^gamma log p_t`` in the bins where the model
is under-confident:

* :func:`adafocal_loss`: the loss for given bins and gammas (a negative gamma is the inverse form's);
* :class:`AdaFocalLoss`: holds them as buffers (``state_dict``) and updates them with
  :meth:`AdaFocalLoss.update` from validation predictions, once per epoch as in the paper;
* :func:`adafocal_step`: the paper's update rule.

The loss call looks gamma up with ``bucketize`` on the device: no per-example Python and no host
sync (the authors' code loops over the examples with ``.item()``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from . import _checks, _math
from ._declare import declare, public_names
from ._errors import InputTypeError, InputValueError
from ._loss_module import _EXAMPLES, LossModule
from ._numerics import bucket_index
from ._softmax_engine import softmax_loss


def _vector(values, name: str, device) -> Tensor:
    """A non-empty 1-d float tensor (a tensor's values are not read: no host sync), or finite numbers."""
    if isinstance(values, Tensor):
        if values.ndim != 1 or not values.is_floating_point() or not values.numel():
            raise InputValueError(f"`{name}` must be a non-empty 1-d float tensor; got {values.dtype} of shape "
                                  f"{tuple(values.shape)}")
        return values.to(device)
    return torch.tensor(_checks.numbers(values, name), dtype=torch.float64, device=device)


def _edges(values, device) -> Tensor:
    """Bin edges as a tensor; numbers are checked to rise from 0 to 1 first (a tensor's are not read)."""
    if isinstance(values, Tensor):
        return _vector(values, "bin_edges", device)
    values = _checks.numbers(values, "bin_edges")
    if values[0] != 0.0 or values[-1] != 1.0 or any(b < a for a, b in zip(values, values[1:])):
        raise InputValueError(f"`bin_edges` must rise from 0.0 to 1.0; got {tuple(values)}")
    return torch.tensor(values, dtype=torch.float64, device=device)


def bins(gammas, bin_edges, device=None) -> tuple[Tensor, Tensor]:
    """``(gammas, bin_edges)`` as tensors: ``B`` gammas, ``B + 1`` edges rising from 0 to 1 (equal
    width when ``bin_edges`` is None)."""
    gammas = _vector(gammas, "gammas", device)
    if bin_edges is None:
        return gammas, torch.linspace(0.0, 1.0, len(gammas) + 1, dtype=torch.float64, device=device)
    edges = _edges(bin_edges, device)
    if len(edges) != len(gammas) + 1:
        raise InputValueError(f"`bin_edges` must hold one more value than `gammas` ({len(gammas) + 1}); "
                              f"got {len(edges)}")
    return gammas, edges


@declare("softmax", "AdaFocalLoss", aliases=("adafocal",))
def adafocal_loss(logits: Tensor, target: Tensor, *, gammas=(1.0,), bin_edges=None, weight=None,
                  ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
                  validate: bool | None = None, backend: str | None = None) -> Tensor:
    """AdaFocal's loss: ``-(1 - p_t)^gamma_b log p_t`` with ``gamma_b`` the gamma of the bin ``b`` of
    ``p_t``, or ``-(1 + p_t)^|gamma_b| log p_t`` where ``gamma_b < 0`` (Ghosh, Schaaf and Gormley,
    NeurIPS 2022). Gamma is constant on each bin, so it has no derivative of its own.

    :class:`AdaFocalLoss` holds the bins and gammas and learns them from validation data; this
    function takes them as they are (a restart, or a schedule of your own).

    Args:
        gammas: one gamma per bin (numbers or a 1-d tensor, e.g. the Module's buffer).
        bin_edges: the ``B + 1`` bin edges in ``p_t``, rising from 0 to 1 (a ``p_t`` at an inner edge
            takes the bin above it); None: ``B`` equal-width bins.
        {softmax_args}

    {returns}
    """
    # the state on the logits' device (the contract checks the logits themselves, once, in softmax_loss)
    gammas, edges = bins(gammas, bin_edges, getattr(logits, "device", None))
    return softmax_loss(_math.binned_focal, dict(inner_edges=edges[1:-1], gammas=gammas), logits, target,
                        weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        reduction=reduction, normalizer=normalizer, validate=validate, backend=backend)


def adafocal_step(gammas: Tensor, gaps: Tensor, *, update_rate: float = 1.0, switch_gamma: float = 0.2,
                  gamma_min: float = -2.0, gamma_max: float = 20.0) -> Tensor:
    """AdaFocal's update of each bin's gamma from its calibration gap ``E_b`` (mean confidence minus
    accuracy on validation data): ``gamma * exp(lambda E_b)`` for ``gamma > 0`` (over-confidence raises
    it), ``gamma * exp(-lambda E_b)`` otherwise; a gamma whose size falls below ``switch_gamma`` crosses
    to the other form at ``-+switch_gamma``; then clipped to ``[gamma_min, gamma_max]``."""
    grown = gammas * torch.exp(torch.where(gammas > 0, update_rate * gaps, -update_rate * gaps))
    switch = torch.full_like(grown, switch_gamma)
    crossed = torch.where(grown > 0, -switch, switch)
    return torch.where(grown.abs() < switch_gamma, crossed, grown).clamp(gamma_min, gamma_max)


def calibration_gaps(confidence: Tensor, correct: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Equal-mass bins of the validation confidences: their ``num_bins + 1`` edges (from 0 to 1, the
    inner ones quantiles) and each bin's mean confidence minus accuracy (0 for an empty bin)."""
    confidence = confidence.double()
    edges = torch.quantile(confidence, torch.linspace(0, 1, num_bins + 1, dtype=torch.float64,
                                                      device=confidence.device))
    edges[0], edges[-1] = 0.0, 1.0
    index = bucket_index(confidence, edges[1:-1])
    count = torch.bincount(index, minlength=num_bins).double()
    gap = torch.bincount(index, weights=confidence - correct.double(), minlength=num_bins)
    return edges, torch.where(count > 0, gap / count.clamp_min(1), 0.0)


def _gather(values: Tensor) -> Tensor:
    """Every rank's ``values`` (1-d, of any length), concatenated in rank order."""
    sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(values)], device=values.device))
    longest = int(max(sizes).item())
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[:len(values)] = values
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(size.item())] for part, size in zip(parts, sizes)])


class AdaFocalLoss(LossModule):
    """AdaFocal: :func:`adafocal_loss` with its bins and gammas in buffers, learnt from validation data.

    Call :meth:`update` once per epoch with the model's validation probabilities and labels; between
    updates the loss is a fixed function of ``p_t``. The defaults are the paper's (15 equal-mass bins,
    gamma starting at 1, ``lambda`` 1, switching at 0.2, at most 20); ``gamma_min`` bounds the inverse form.

    Args:
        num_bins: the number of bins, when ``gammas`` is not given.
        gamma_initial: every bin's gamma before the first update.
        update_rate, switch_gamma, gamma_min, gamma_max: :func:`adafocal_step`'s.
        gammas, bin_edges: a starting state (e.g. saved values) instead of ``num_bins`` and ``gamma_initial``.
        distributed: gather the validation predictions of every rank in :meth:`update` (``None``: when a
            process group of 2+ ranks exists), so that each holds the same gammas.
        weight, ignore_index, label_smoothing, reduction, normalizer, validate, backend: as
            :func:`adafocal_loss`.
    """

    function = staticmethod(adafocal_loss)
    example = staticmethod(_EXAMPLES["softmax"])  # the construction-time check (the buffers left out)

    def __init__(self, *, num_bins: int = 15, gamma_initial: float = 1.0, update_rate: float = 1.0,
                 switch_gamma: float = 0.2, gamma_min: float = -2.0, gamma_max: float = 20.0, gammas=None,
                 bin_edges=None, distributed: bool | None = None, **options):
        num_bins = _checks.integer(num_bins, "num_bins", low=1)
        if gammas is None:
            gammas = (_checks.number(gamma_initial, "gamma_initial"),) * num_bins
        gammas, bin_edges = bins(gammas, bin_edges)
        self.update_rate = _checks.number(update_rate, "update_rate", low=0.0)
        self.switch_gamma = _checks.number(switch_gamma, "switch_gamma", low=0.0)
        self.gamma_min = _checks.number(gamma_min, "gamma_min", high=-self.switch_gamma)
        self.gamma_max = _checks.number(gamma_max, "gamma_max", low=self.switch_gamma)
        self.distributed = distributed
        super().__init__(gammas=gammas.clone(), bin_edges=bin_edges.clone(), **options)

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor) -> None:
        """One AdaFocal step from validation predictions ``probs (M, C)`` (softmax probabilities) and
        ``labels (M,)``: new equal-mass bins of the predictions' confidence (their top probability)
        and each bin's gamma moved by its calibration gap (:func:`adafocal_step`)."""
        _checks.float_tensor(probs, "probs")
        if not isinstance(labels, Tensor) or not _checks.is_index(labels):
            raise InputTypeError(f"`labels` must be an integer tensor; got {getattr(labels, 'dtype', type(labels))}")
        if probs.ndim != 2 or labels.shape != probs.shape[:1]:
            raise InputValueError(f"`probs` must have shape (M, C) and `labels` (M,); got {tuple(probs.shape)} "
                                  f"and {tuple(labels.shape)}")
        confidence, predicted = probs.max(1)
        correct = (predicted == labels).double()
        if _checks.is_distributed(self.distributed):
            confidence, correct = _gather(confidence.double()), _gather(correct)
        if not len(confidence):
            raise InputValueError("`probs` holds no predictions: update needs validation data")
        edges, gaps = calibration_gaps(confidence, correct, len(self.gammas))
        step = adafocal_step(self.gammas.double(), gaps.to(self.gammas.device), update_rate=self.update_rate,
                             switch_gamma=self.switch_gamma, gamma_min=self.gamma_min, gamma_max=self.gamma_max)
        self.gammas.copy_(step)
        self.bin_edges.copy_(edges)


__all__ = [*public_names(__name__), "adafocal_step"]
