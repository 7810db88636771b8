"""Long-tailed classification: class-balanced weights, class priors and the losses that read them.

The helpers turn per-class training counts into what the losses take: :func:`class_balanced_weight`
(Cui et al., CVPR 2019) for any loss's ``weight=`` or ``alpha=``, :func:`class_prior` for
:func:`logit_adjusted_cross_entropy` (Menon et al., ICLR 2021) and :func:`adjust_logits` at evaluation.
:func:`ldam_loss` (Cao et al., NeurIPS 2019) reads the counts themselves. Each loss is cross-entropy
(through the softmax family's contract and engines) of logits moved first; :func:`reduced_focal_loss`
is a function of ``p_t`` and runs on the row engine like focal loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _checks, _math
from ._declare import Hyperparameter, declare, public_names
from ._loss_module import _EXAMPLES, LossModule, PerClassStatistics
from ._errors import InputTypeError, InputValueError
from ._numerics import compute_dtype, is_class, output_dtype
from ._softmax_engine import check_logits, check_target, one_hot_as_indices, softmax_loss


def _counts(counts, name: str = "counts") -> Tensor:
    """Per-class counts as a float64 vector: one or more entries, each finite and > 0."""
    if isinstance(counts, Tensor):
        if counts.is_complex() or counts.dtype == torch.bool:
            raise InputTypeError(f"`{name}` must hold numbers; got dtype {counts.dtype}")
        values = counts.detach().to("cpu", torch.float64)
    else:
        try:
            values = torch.as_tensor(counts, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InputTypeError(f"`{name}` must be a sequence of per-class counts; got {counts!r}") from None
    if values.ndim != 1 or values.numel() == 0:
        raise InputValueError(f"`{name}` must be a non-empty vector of per-class counts; "
                              f"got shape {tuple(values.shape)}")
    bad = ~(torch.isfinite(values) & (values > 0))
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise InputValueError(f"`{name}` must be finite and > 0 for every class; got {float(values[index])} "
                              f"for class {index}")
    return values


def _like(counts) -> dict:
    """The dtype and device a helper returns: the counts' own where they are a float tensor, else the default."""
    if isinstance(counts, Tensor) and counts.is_floating_point():
        return dict(dtype=counts.dtype, device=counts.device)
    return dict(dtype=torch.get_default_dtype(), device=counts.device if isinstance(counts, Tensor) else None)


def class_prior(counts) -> Tensor:
    """The class prior ``pi_c = n_c / sum_k n_k`` of per-class training counts ``n_c > 0`` (a sequence or a
    tensor, e.g. ``torch.bincount(labels, minlength=C)``): what :func:`logit_adjusted_cross_entropy` and
    :func:`adjust_logits` take.

    Example:
        >>> import polyfocal as pf
        >>> pf.class_prior([300, 100]).tolist()
        [0.75, 0.25]
    """
    values = _counts(counts)
    return (values / values.sum()).to(**_like(counts))


def class_balanced_weight(counts, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights by the effective number of samples (Cui et al., CVPR 2019):
    ``w_c = (1 - beta) / (1 - beta^n_c)``, scaled so that they sum to the number of classes C.

    ``beta = 0`` gives every class 1; as ``beta`` approaches 1 the weights approach ``1 / n_c`` (scaled).
    The paper searches beta in {0.9, 0.99, 0.999, 0.9999}. Pass the result as any loss's ``weight=``
    (part of the mean's denominator, as torch's) or ``alpha=`` (a class factor outside it).

    Args:
        counts: per-class training counts, each > 0.
        beta: in [0, 1).
    """
    values = _counts(counts)
    beta = _checks.number(beta, "beta", low=0.0, high=1.0, high_open=True)
    # 1 - beta^n as -expm1(n log beta): exact where beta^n is close to 1 (beta near 1, small n)
    effective = -torch.expm1(values * math.log(beta)) if beta > 0 else torch.ones_like(values)
    weights = 1.0 / effective  # (1 - beta) cancels in the scaling
    return (weights * (len(values) / weights.sum())).to(**_like(counts))


def _check_prior(prior, num_classes: int, logits: Tensor, validate) -> Tensor:
    prior = _checks.class_vector(prior, "prior", num_classes, logits)
    if _checks.should_validate(validate, prior):
        low, total = float(prior.min()), float(prior.double().sum())
        if not low > 0 or not math.isfinite(total) or abs(total - 1) > 1e-3:
            raise InputValueError(f"`prior` must be class probabilities, each > 0 and summing to 1 (see "
                                  f"polyfocal.class_prior); got the smallest {low} and the sum {total}")
    return prior


def _moved_logits(logits: Tensor, prior, tau: float, validate) -> Tensor:
    """``logits + tau log(prior)`` along dim 1, in the compute dtype (``prior`` None: unmoved)."""
    num_classes = check_logits(logits)
    x = logits.to(compute_dtype(logits))
    if prior is None or tau == 0:
        return x
    prior = _check_prior(prior, num_classes, x, validate)
    return x + (tau * torch.log(prior)).view((1, -1) + (1,) * (logits.ndim - 2))


def adjust_logits(logits: Tensor, prior, tau: float = 1.0) -> Tensor:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``logits - tau log(prior)`` along dim 1.

    For a model trained with plain cross-entropy on long-tailed data, the arg-max of the adjusted
    logits estimates the class that minimises the balanced error. (Training with
    :func:`logit_adjusted_cross_entropy` adds ``tau log(prior)`` in the loss instead: its logits need
    no adjustment afterwards.)

    Args:
        logits: ``(N, C, *)``.
        prior: ``(C,)`` class probabilities (:func:`class_prior`), each > 0.
        tau: >= 0; the paper uses 1.
    """
    tau = _checks.number(tau, "tau", low=0.0)
    return _moved_logits(logits, prior, -tau, None).to(logits.dtype)


TAU = Hyperparameter("tau", "logit adjustment's temperature on log(prior) (1: balanced softmax)")
MAX_MARGIN = Hyperparameter("max_margin", "LDAM's largest margin (the rarest class's)", flag="--max-margin")
SCALE = Hyperparameter("scale", "LDAM's scale s of the margin-shifted logits", flag="--ldam-scale")
THRESHOLD = Hyperparameter("threshold", "reduced focal loss's p_t past which focal modulation starts")


@declare("softmax", "LogitAdjustedCrossEntropyLoss", aliases=("logit_adjusted",), hyperparameters=(TAU,),
         curve=False)
def logit_adjusted_cross_entropy(logits: Tensor, target: Tensor, *, prior=None, tau: float = 1.0, weight=None,
                                 ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                                 normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): cross-entropy of ``logits + tau log(prior)``.

    With ``tau = 1`` this is the balanced softmax (Ren et al., NeurIPS 2020): rare classes must win by a
    larger margin in training, so the trained logits themselves favour them less than plain
    cross-entropy's would and estimate the balanced-error classifier. ``prior=None`` is the uniform prior,
    which moves every logit alike: plain cross-entropy.

    Args:
        prior: ``(C,)`` training class probabilities, each > 0, summing to 1 (:func:`class_prior`), or None.
        tau: >= 0; the paper uses 1.
        {softmax_args}

    {returns}

    Example:
        >>> import torch, polyfocal as pf
        >>> labels = torch.cat([torch.zeros(90), torch.ones(10)]).long()
        >>> prior = pf.class_prior(torch.bincount(labels))
        >>> loss = pf.logit_adjusted_cross_entropy(torch.randn(100, 2), labels, prior=prior)
    """
    tau = _checks.number(tau, "tau", low=0.0)
    x = _moved_logits(logits, prior, tau, validate)
    return softmax_loss(_math.poly_series, {}, x, target, weight=weight, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer,
                        validate=validate, backend=backend).to(output_dtype(logits))


def ldam_margins(class_counts, max_margin: float, num_classes: int) -> Tensor:
    """LDAM's per-class margins ``Delta_j`` proportional to ``n_j^(-1/4)``, the largest (the rarest
    class's) ``max_margin``; every class ``max_margin`` where ``class_counts`` is None."""
    if class_counts is None:
        return torch.full((num_classes,), max_margin, dtype=torch.float64)
    values = _counts(class_counts, "class_counts")
    if len(values) != num_classes:
        raise InputValueError(f"`class_counts` must have one count per class, C = {num_classes}; got {len(values)}")
    return max_margin * (values.min() / values) ** 0.25


def _margin_shifted(logits: Tensor, target: Tensor, margins: Tensor, ignore_index: int) -> Tensor:
    """``logits - Delta * y`` along dim 1, ``y`` the one-hot target (ignored rows at class 0) or the
    probabilities."""
    view = (1, -1) + (1,) * (logits.ndim - 2)
    margins = margins.to(logits.device, logits.dtype).view(view)
    if target.is_floating_point():
        return logits - margins * target.to(logits.dtype)
    labels = torch.where(target == ignore_index, torch.zeros_like(target), target)
    return torch.where(is_class(logits, labels), logits - margins, logits)


@declare("softmax", "LDAMLoss", aliases=("ldam",), hyperparameters=(MAX_MARGIN, SCALE), curve=False)
def ldam_loss(logits: Tensor, target: Tensor, *, class_counts=None, max_margin: float = 0.5, scale: float = 30.0,
              weight=None, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
              normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Label-distribution-aware margin loss, LDAM (Cao et al., NeurIPS 2019): cross-entropy of
    ``scale * (logits - Delta_t e_t)``, the target's logit lowered by its class's margin
    ``Delta_j ~ n_j^(-1/4)`` (the rarest class's ``max_margin``).

    The paper's deferred re-weighting (DRW) is a ``weight=`` switched on late in training, e.g.
    ``weight=pf.class_balanced_weight(counts, beta=0.9999)`` from the epoch the learning rate first
    decays (160 of 200 on CIFAR). The paper normalises features and head weights, so its logits are
    cosines: with raw logits a smaller ``scale`` may suit. A probability target lowers each class's
    logit by ``Delta_c y_c``. ``class_counts=None`` gives every class ``max_margin``.

    Args:
        class_counts: per-class training counts, each > 0 (a sequence or a ``(C,)`` tensor), or None.
        max_margin: >= 0, the largest margin; the paper uses 0.5.
        scale: > 0, the logits' scale ``s``; the paper uses 30.
        {softmax_args}

    {returns}
    """
    num_classes = check_logits(logits)
    max_margin = _checks.number(max_margin, "max_margin", low=0.0)
    scale = _checks.number(scale, "scale", low=0.0, low_open=True)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    index, _ = check_target(logits, target, ignore_index, validate)  # before the target is read
    target, one_hot = one_hot_as_indices(target, index, weight, validate)
    ignore_index = -1 if one_hot else ignore_index  # argmax's labels: none is ignored
    x = logits.to(compute_dtype(logits))
    x = scale * _margin_shifted(x, target, ldam_margins(class_counts, max_margin, num_classes), ignore_index)
    return softmax_loss(_math.poly_series, {}, x, target, weight=weight, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer,
                        validate=False, backend=backend).to(output_dtype(logits))


class LDAMLoss(LossModule):
    """:func:`ldam_loss` as a Module, with the paper's deferred re-weighting (DRW): from epoch ``drw_epoch``
    on (``set_epoch``, a buffer in ``state_dict``) the loss takes ``weight=class_balanced_weight(class_counts,
    drw_beta)``; before it, none. The switch reads the epoch on the device, without a host synchronisation.

    Args:
        drw_epoch: the first re-weighted epoch (the paper: 160 of 200 on CIFAR), or None (no re-weighting).
        drw_beta: the class-balanced weights' beta, in [0, 1); the paper uses 0.9999.
        class_counts, max_margin, scale, ...: as :func:`ldam_loss` (``class_counts`` required with DRW, and
            ``weight`` not allowed with it: DRW is the weight).
    """

    function = staticmethod(ldam_loss)
    example = staticmethod(_EXAMPLES["softmax"])

    def __init__(self, *, drw_epoch: int | None = None, drw_beta: float = 0.9999, **options):
        super().__init__(**options)
        self.drw_epoch = None if drw_epoch is None else _checks.integer(drw_epoch, "drw_epoch", low=0)
        counts = options.get("class_counts")
        weights = None
        if self.drw_epoch is not None:
            if counts is None or options.get("weight") is not None:
                raise InputValueError("`drw_epoch` re-weights by `class_counts`: give them, and no `weight`; got "
                                      f"class_counts={counts!r}, weight={options.get('weight')!r}")
            weights = class_balanced_weight(counts, beta=drw_beta)
        self.register_buffer("drw_weight", weights)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to be trained (0-based), as a sampler's ``set_epoch``."""
        self.epoch.fill_(_checks.integer(epoch, "epoch", low=0))

    def forward(self, logits: Tensor, target, weight: Tensor | None = None, normalizer=None) -> Tensor:
        if weight is None and self.drw_weight is not None:
            on = self.epoch >= self.drw_epoch
            weight = torch.where(on, self.drw_weight.to(logits.device), torch.ones_like(self.drw_weight))
        return super().forward(logits, target, weight, normalizer)


@declare("softmax", "ReducedFocalLoss", aliases=("reduced_focal",), hyperparameters=("gamma", THRESHOLD))
def reduced_focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, threshold: float = 0.5, alpha=None,
                       weight=None, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
                       normalizer=None, validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Reduced focal loss (Sergievskiy and Ponamarev, arXiv:1903.01347): cross-entropy ``-log p_t``
    while ``p_t < threshold``, then ``((1 - p_t) / threshold)^gamma (-log p_t)``.

    Hard examples keep cross-entropy's full gradient; only those past the threshold are focal-modulated
    (with ``threshold = 0.5`` the two pieces meet). segmentation_models_pytorch's ``reduced_threshold``
    is the same rule on its sigmoid form (:func:`sigmoid_reduced_focal_loss`).

    Args:
        gamma: >= 0, the focusing parameter past the threshold.
        threshold: in (0, 1).
        alpha: as in :func:`focal_loss`.
        {softmax_args}

    {returns}
    """
    params = dict(gamma=_checks.number(gamma, "gamma", low=0.0),
                  threshold=_checks.number(threshold, "threshold", low=0.0, high=1.0, low_open=True, high_open=True))
    return softmax_loss(_math.reduced_focal, params, logits, target, weight=weight, alpha=alpha,
                        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                        normalizer=normalizer, validate=validate, backend=backend)


def _seesaw_log_factors(x: Tensor, labels: Tensor, log_counts, p: float, q: float) -> Tensor:
    """``log S_ij`` for each row's label ``i`` and every class ``j`` (0 at ``j = i``): mitigation
    ``-p max(log N_i - log N_j, 0)`` and compensation ``q max(x_j - x_i, 0)`` (``sigma_j / sigma_i`` is
    ``exp(x_j - x_i)``; the logits held constant, as the paper's probabilities are)."""
    log_s = torch.zeros_like(x)
    if log_counts is not None and p > 0:
        view = (1, -1) + (1,) * (x.ndim - 2)
        log_s = log_s - p * (log_counts[labels].unsqueeze(1) - log_counts.view(view)).clamp_min(0)
    if q > 0:
        at_label = x.detach().gather(1, labels.unsqueeze(1))
        log_s = log_s + q * (x.detach() - at_label).clamp_min(0)
    return log_s


SEESAW_P = Hyperparameter("p", "seesaw's mitigation exponent (0 turns it off)", flag="--seesaw-p")
SEESAW_Q = Hyperparameter("q", "seesaw's compensation exponent (0 turns it off)", flag="--seesaw-q")


@declare("softmax", "SeesawLoss", aliases=("seesaw",), hyperparameters=(SEESAW_P, SEESAW_Q), curve=False)
def seesaw_loss(logits: Tensor, target: Tensor, *, class_counts=None, p: float = 0.8, q: float = 2.0, weight=None,
                ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
                validate: bool | None = None, backend: str | None = None) -> Tensor:
    """Seesaw loss (Wang et al., CVPR 2021): cross-entropy with each negative logit ``x_j`` of an example of
    class ``i`` moved by ``log S_ij``, ``S_ij = M_ij C_ij``.

    Mitigation ``M_ij = (N_j / N_i)^p`` where class ``j`` has fewer accumulated examples than ``i`` (else 1)
    shrinks the penalty a frequent class's examples put on a rare class's logit; compensation
    ``C_ij = (sigma_j / sigma_i)^q`` where the negative's probability exceeds the target's (else 1) restores it
    for the negatives the model wrongly prefers. The counts accumulate over training in :class:`SeesawLoss`;
    here they are given (None: compensation only). mmdet divides by ``max(sigma_i, 0.01)``; this is exact.
    Class-index targets only (as the paper): a probability target has no single class ``i``.

    Args:
        class_counts: per-class example counts so far (0 counts as 1), a sequence or a ``(C,)`` tensor, or None.
        p: >= 0; the paper uses 0.8.
        q: >= 0; the paper uses 2.
        {softmax_args}

    {returns}
    """
    num_classes = check_logits(logits)
    p, q = _checks.number(p, "p", low=0.0), _checks.number(q, "q", low=0.0)
    _checks.integer(ignore_index, "ignore_index", low=-(2**63))
    if not check_target(logits, target, ignore_index, validate)[0]:
        raise InputTypeError("`target` of seesaw_loss must be class indices (N, *): its factors are defined for "
                             f"one class per example; got a float tensor of shape {tuple(target.shape)}")
    x = logits.to(compute_dtype(logits))
    log_counts = None
    if class_counts is not None:
        if isinstance(class_counts, Tensor) and not class_counts.is_floating_point():
            class_counts = class_counts.to(x.dtype)  # bincount's int64
        counts = _checks.class_vector(class_counts, "class_counts", num_classes, x)
        if _checks.should_validate(validate, counts) and not bool((counts >= 0).all()):
            raise InputValueError(f"`class_counts` must be >= 0 for every class; got {counts.tolist()}")
        log_counts = torch.log(counts.clamp_min(1))
    labels = torch.where(target == ignore_index, torch.zeros_like(target), target)
    log_s = _seesaw_log_factors(x, labels, log_counts, p, q)
    x = x + torch.where(is_class(x, labels), torch.zeros_like(log_s), log_s)
    return softmax_loss(_math.poly_series, {}, x, target, weight=weight, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction, normalizer=normalizer,
                        validate=False, backend=backend).to(output_dtype(logits))


class SeesawLoss(PerClassStatistics):
    """:func:`seesaw_loss` with its class counts: each call first adds its examples' labels to
    ``class_counts`` (a float64 buffer, all ranks' together under ``torch.distributed``), then computes the
    loss, as the paper's implementation does.

    Args:
        num_classes: C, or None to size the counts from the first batch.
        distributed: all-reduce each batch's counts across ranks (None: when a process group of 2+ ranks exists).
        p, q, weight, ignore_index, label_smoothing, reduction, normalizer, validate, backend: as
            :func:`seesaw_loss`.
    """

    per_class = statistics = ("class_counts",)

    def __init__(self, num_classes: int | None = None, *, p: float = 0.8, q: float = 2.0, weight=None,
                 ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean", normalizer=None,
                 validate: bool | None = None, distributed: bool | None = None, backend: str | None = None):
        options = dict(p=_checks.number(p, "p", low=0.0), q=_checks.number(q, "q", low=0.0), weight=weight,
                       ignore_index=ignore_index, reduction=reduction, normalizer=normalizer, validate=validate,
                       backend=backend,
                       label_smoothing=_checks.number(label_smoothing, "label_smoothing", low=0.0, high=1.0))
        super().__init__(num_classes, distributed, options)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None, normalizer=None) -> Tensor:
        self._sized(logits)
        options = {**self.options, "weight": self._weight(weight)}
        options["normalizer"] = options["normalizer"] if normalizer is None else normalizer
        check_logits(logits)
        if check_target(logits, target, options["ignore_index"], options["validate"])[0]:  # before it is counted
            valid = target != options["ignore_index"]
            labels = torch.where(valid, target, torch.zeros_like(target)).reshape(-1)
            batch = torch.zeros_like(self.class_counts).index_add_(0, labels, valid.reshape(-1).to(torch.float64))
            self.class_counts += self._all_ranks(batch)
        return seesaw_loss(logits, target, class_counts=self.class_counts, **{**options, "validate": False})


__all__ = [*public_names(__name__), "class_prior", "class_balanced_weight", "adjust_logits", "ldam_margins"]
