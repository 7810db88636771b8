"""Obvious, slow reference implementations written straight from the papers' formulas.

They use plain probabilities (softmax / sigmoid, then log) and literal series, so they
share no code and no numerical trick with the library. Use them on moderate logits.
"""

from __future__ import annotations

import torch

import polyfocal as pf

#: the hyperparameters the suites call a loss with where its defaults would not do (a required one,
#: or a default that hides a term); a loss not listed here is called with its defaults
PARAMS = {
    "polyn_cross_entropy": {"epsilons": (1.0, 0.5)}, "poly_loss": {"coefficients": (2.0,), "gamma": 1.0},
    "truncated_cross_entropy": {"n_terms": 3}, "soft_truncated_loss": {"k": 2.0},
    "poly1_focal_loss": {"epsilon": -1.0}, "quality_focal_loss": {"beta": 1.5},
    "generalized_focal_loss": {"beta": 1.5},
    "adafocal_loss": {"gammas": (3.0, -1.5, 0.5), "bin_edges": (0.0, 0.3, 0.6, 1.0)},
}

#: losses of class-index targets only (the suites give the others probabilities too)
INDEX_ONLY = {"seesaw_loss", "asymmetric_single_label_loss"}

#: losses whose gradient is not their value's derivative (a stop-gradient weight: DFT's p_t, seesaw's
#: compensation): finite differences (gradcheck) cannot check them, so their own tests compare every
#: derivative with a twin's
STOP_GRADIENT = {"dft_cross_entropy", "seesaw_loss"}


def declared(*families: str) -> dict[str, dict]:
    """Every declared loss of these families (all of them without one) and the hyperparameters the
    suites call it with: the suites' lists of losses, so a new declaration is tested everywhere."""
    return {d.name: PARAMS.get(d.name, {}) for d in pf.registry.declarations()
            if not families or d.family in families}


# --- softmax family: per-class functions of p -----------------------------------------------------


def ce(p):
    return -torch.log(p)


def focal(p, gamma):
    return -((1 - p) ** gamma) * torch.log(p)


def poly1(p, epsilon):
    return -torch.log(p) + epsilon * (1 - p)


def polyn(p, epsilons):
    return -torch.log(p) + sum(e * (1 - p) ** j for j, e in enumerate(epsilons, start=1))


def ce_tail(p, n_terms, gamma=0.0, n_series=None):
    """``sum_(j > N) (1-p)^(j+gamma) / j``: literally when ``n_series`` is given, else as
    ``(1-p)^gamma (-log p - sum_(j <= N) (1-p)^j / j)`` (exact for any p; tested against the series)."""
    if n_series is not None:
        j = torch.arange(n_terms + 1, n_series, dtype=p.dtype)[:, None]
        return ((1 - p) ** (j + gamma) / j).sum(0)
    return (1 - p) ** gamma * (-torch.log(p) - truncated(p, n_terms))


def poly_series(p, coefficients, gamma=0.0, tail="ce"):
    """``sum_j a_j (1-p)^(j+gamma)`` over the given terms, plus cross-entropy's tail."""
    total = sum(a * (1 - p) ** (j + gamma) for j, a in enumerate(coefficients, start=1))
    return total + ce_tail(p, len(coefficients), gamma) if tail == "ce" else total


def truncated(p, n_terms):
    return sum((1 - p) ** j / j for j in range(1, n_terms + 1))


def su_soft(p, k):
    margin = torch.log(p) - torch.log(1 - p)  # x_t - logsumexp_{j != t} x_j
    return torch.sigmoid(-k * margin) * -torch.log(p)


def su_hard(p, margin):
    return (p <= margin).to(p.dtype) * -torch.log(p)


def dft(p):
    """Dynamic Fine-Tuning (arXiv:2508.05629): ``-sg(p) log p``, the weight ``p`` a constant."""
    return -p.detach() * torch.log(p)


def inverse_focal(p, gamma):
    """Wang et al. (NeurIPS 2021): ``-(1 + p)^gamma log p``."""
    return -((1 + p) ** gamma) * torch.log(p)


def sample_dependent_focal(p, gamma_schedule):
    """Mukhoti et al. (NeurIPS 2020): focal loss whose gamma is gamma_i for p in [bound_(i-1), bound_i),
    a constant on each step."""
    gamma = torch.full_like(p, gamma_schedule[-1][1])
    for bound, value in reversed(gamma_schedule[:-1]):
        gamma = torch.where(p.detach() < bound, torch.full_like(p, value), gamma)
    return -((1 - p) ** gamma) * torch.log(p)



def dual_focal(p, gamma):
    """Tao et al. (ICML 2023): ``-(1 - p + p_j)^gamma log p``, ``p_j`` the largest probability of the row
    below ``p`` (0 where none is), one class at a time."""
    below = torch.stack([p[p < pc].max() if (p < pc).any() else p.new_zeros(()) for pc in p])
    return -((1 - p + below) ** gamma) * torch.log(p)


def adafocal(p, gammas, bin_edges):
    """Ghosh et al. (NeurIPS 2022): gamma of p's bin ``[e_b, e_(b+1))`` (the last bin takes 1), focal
    loss for gamma >= 0, the inverse form ``-(1 + p)^|gamma| log p`` for gamma < 0; gamma a constant."""
    out = []
    for pc in p:
        b = next(i for i in range(len(gammas)) if float(pc.detach()) < bin_edges[i + 1] or i == len(gammas) - 1)
        g = gammas[b]
        out.append(-((1 - pc) ** g) * torch.log(pc) if g >= 0 else -((1 + pc) ** -g) * torch.log(pc))
    return torch.stack(out)

def reduced_focal(p, gamma, threshold):
    """Sergievskiy and Ponamarev (2019): ``-log p`` below the threshold, ``((1-p)/threshold)^gamma (-log p)``
    from it."""
    modulator = torch.where(p < threshold, torch.ones_like(p), ((1 - p) / threshold) ** gamma)
    return -modulator * torch.log(p)


class OnLogits:
    """Cross-entropy of logits moved first (logit adjustment, LDAM): ``move(x, y, **params)`` takes a row
    block's logits ``(rows, C)`` and its target before smoothing (one-hot or probabilities)."""

    def __init__(self, move):
        self.move = move

    def __call__(self, probability, /, **params):  # positional: seesaw has a parameter named p
        return ce(probability)


def logit_adjusted(x, y, prior=None, tau=1.0):
    """Menon et al. (ICLR 2021): the logits plus ``tau log pi``."""
    return x if prior is None else x + tau * torch.log(torch.as_tensor(prior, dtype=x.dtype))


def ldam(x, y, class_counts=None, max_margin=0.5, scale=30.0):
    """Cao et al. (NeurIPS 2019): ``Delta_j = C / n_j^(1/4)``, rescaled so that the largest is max_margin;
    ``s (z - Delta_y)`` at the target (``Delta * y`` for probabilities)."""
    c = x.shape[1]
    counts = torch.ones(c, dtype=x.dtype) if class_counts is None else torch.as_tensor(class_counts, dtype=x.dtype)
    delta = c / counts ** 0.25
    delta = delta * (max_margin / delta.max())
    return scale * (x - delta * y)


def seesaw(x, y, class_counts=None, p=0.8, q=2.0):
    """Wang et al. (CVPR 2021), one row and one class at a time: for the row's class ``i`` and each other ``j``,
    ``x_j + log(M_ij C_ij)``, ``M_ij = (N_j / N_i)^p`` if ``N_j < N_i`` (counts of at least 1), ``C_ij =
    (sigma_j / sigma_i)^q`` if ``sigma_j > sigma_i`` (the probabilities held constant), else 1."""
    counts = None if class_counts is None else torch.as_tensor(class_counts, dtype=x.dtype).clamp(min=1)
    sigma = torch.softmax(x.detach(), 1)
    out = x.clone()
    for r in range(x.shape[0]):
        i = int(y[r].argmax())
        for j in range(x.shape[1]):
            m = (counts[j] / counts[i]) ** p if counts is not None and counts[j] < counts[i] else 1.0
            c = (sigma[r, j] / sigma[r, i]) ** q if sigma[r, j] > sigma[r, i] else 1.0
            if j != i:
                out[r, j] = x[r, j] + torch.log(torch.as_tensor(m * c, dtype=x.dtype))
    return out


class ByClass:
    """A loss with one form at the target class and another at the others (the single-label ASL), each weighted
    by its share of the (smoothed) target."""

    def __init__(self, target, other):
        self.target, self.other = target, other


def asl_target(p, gamma_pos, gamma_neg):
    return -((1 - p) ** gamma_pos) * torch.log(p)


def asl_other(p, gamma_pos, gamma_neg):
    return -(p ** gamma_neg) * torch.log(p)


SOFTMAX = {
    "cross_entropy": (ce, {}),
    "focal_loss": (focal, {"gamma": 2.0}),
    "poly1_cross_entropy": (poly1, {"epsilon": 2.0}),
    "polyn_cross_entropy": (polyn, {"epsilons": (1.0, -0.3, 0.5)}),
    "poly_loss": (poly_series, {"coefficients": (2.0, 0.1), "gamma": 0.5, "tail": "ce"}),
    "truncated_cross_entropy": (truncated, {"n_terms": 5}),
    "soft_truncated_loss": (su_soft, {"k": 3.0}),
    "hard_truncated_loss": (su_hard, {"margin": 0.4}),
    "dft_cross_entropy": (dft, {}),
    "inverse_focal_loss": (inverse_focal, {"gamma": 1.5}),
    "sample_dependent_focal_loss": (sample_dependent_focal, {"gamma_schedule": ((0.3, 4.0), (0.7, 2.0), (1.0, 0.5))}),
    "dual_focal_loss": (dual_focal, {"gamma": 2.5}),
    "adafocal_loss": (adafocal, {"gammas": (2.0, -1.0, 0.5, 1.5), "bin_edges": (0.0, 0.2, 0.5, 0.8, 1.0)}),
    "reduced_focal_loss": (reduced_focal, {"gamma": 1.5, "threshold": 0.6}),
    "logit_adjusted_cross_entropy": (OnLogits(logit_adjusted), {"tau": 1.0}),
    "ldam_loss": (OnLogits(ldam), {"max_margin": 0.4, "scale": 5.0}),
    "seesaw_loss": (OnLogits(seesaw), {"q": 1.5}),
    "asymmetric_single_label_loss": (ByClass(asl_target, asl_other), {"gamma_pos": 1.0, "gamma_neg": 3.0}),
}


def softmax_loss(phi, logits, target, *, weight=None, alpha=None, ignore_index=-100,
                 label_smoothing=0.0, reduction="mean", **params):
    """The softmax family's contract, example by example."""
    n, c = logits.shape[:2]
    x = logits.movedim(1, -1).reshape(-1, c)
    p = torch.softmax(x, dim=1)
    w = torch.ones(c, dtype=x.dtype) if weight is None else weight
    a = torch.ones(c, dtype=x.dtype) if alpha is None else torch.as_tensor(alpha, dtype=x.dtype).expand(c)
    if target.is_floating_point():
        y = target.movedim(1, -1).reshape(-1, c)
        valid = torch.ones(len(y), dtype=torch.bool)
        denominators = torch.ones(len(y), dtype=x.dtype)
    else:
        t = target.reshape(-1)
        valid = t != ignore_index
        safe = torch.where(valid, t, 0)
        y = torch.nn.functional.one_hot(safe, c).to(x.dtype)
        denominators = w[safe] * valid
    hard = y
    if isinstance(phi, OnLogits):
        x = phi.move(x, y, **params)
        p = torch.softmax(x, dim=1)
    y = y * (1 - label_smoothing) + label_smoothing / c
    losses = []
    for i in range(len(x)):
        if isinstance(phi, ByClass):
            per_class = torch.where(hard[i] > 0, phi.target(p[i], **params), phi.other(p[i], **params))
        else:
            per_class = phi(p[i], **params)
        losses.append((y[i] * w * a * per_class).sum() if valid[i] else x.new_zeros(()))
    loss = torch.stack(losses)
    if reduction == "none":
        return loss.reshape((n,) + tuple(logits.shape[2:]))
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / denominators.sum()


# --- sigmoid family -------------------------------------------------------------------------------


def bce(x, y):
    p = torch.sigmoid(x)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def sigmoid_focal(x, y, gamma=2.0, alpha=0.25, epsilon=0.0):
    """torchvision's form: ``alpha_t (1 - p_t)^gamma BCE + epsilon (1 - p_t)^(gamma+1)``."""
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    return a_t * (1 - p_t) ** gamma * bce(x, y) + epsilon * (1 - p_t) ** (gamma + 1)


def sigmoid_su_soft(x, y, k=1.0):
    p = torch.sigmoid(x)
    return -y * torch.sigmoid(-k * x) * torch.log(p) - (1 - y) * torch.sigmoid(k * x) * torch.log(1 - p)


def sigmoid_su_hard(x, y, margin=0.5):
    p = torch.sigmoid(x)
    keep_pos = (p <= margin).to(x.dtype)
    keep_neg = (1 - p <= margin).to(x.dtype)
    return -y * keep_pos * torch.log(p) - (1 - y) * keep_neg * torch.log(1 - p)


def asymmetric(x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    """Ben-Baruch et al. (ICCV 2021): ``-y (1-p)^g+ log p - (1-y) p_m^g- log(1 - p_m)``, ``p_m = max(p - m, 0)``."""
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0)
    return -y * (1 - p) ** gamma_pos * torch.log(p) - (1 - y) * p_m ** gamma_neg * torch.log(1 - p_m)


def sigmoid_reduced_focal(x, y, gamma=2.0, threshold=0.5):
    """The reduced focal rule on each side: ``y f(p) + (1-y) f(1-p)``, ``f`` as :func:`reduced_focal`."""
    p = torch.sigmoid(x)
    return y * reduced_focal(p, gamma, threshold) + (1 - y) * reduced_focal(1 - p, gamma, threshold)


def _per_class(vector, x):
    return torch.as_tensor(vector, dtype=x.dtype).view((1, -1) + (1,) * (x.ndim - 2))


def eqlv2(x, y, gradient_ratio=None, gamma=12.0, mu=0.8, alpha=4.0):
    """Tan et al. (CVPR 2021): BCE, positives of class j weighted ``1 + alpha (1 - f(g_j))``, negatives
    ``f(g_j) = 1 / (1 + exp(-gamma (g_j - mu)))``; every weight 1 without statistics."""
    if gradient_ratio is None:
        return bce(x, y)
    f = 1 / (1 + torch.exp(-gamma * (_per_class(gradient_ratio, x) - mu)))
    return (y * (1 + alpha * (1 - f)) + (1 - y) * f) * bce(x, y)


def efl(x, y, gradient_ratio=None, gamma=2.0, scale_factor=8.0, alpha=0.25):
    """Li et al. (CVPR 2022): ``-alpha_t (gamma_j / gamma) (1 - p_t)^gamma_j log p_t``,
    ``gamma_j = gamma + s (1 - g_j)``; ``g = 1`` without statistics."""
    g = torch.ones(x.shape[1], dtype=x.dtype) if gradient_ratio is None else gradient_ratio
    gamma_j = gamma + scale_factor * (1 - _per_class(g, x))
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    return a_t * gamma_j / gamma * (1 - p_t) ** gamma_j * bce(x, y)


SIGMOID = {
    "binary_cross_entropy": (bce, {}),
    "sigmoid_focal_loss": (sigmoid_focal, {"gamma": 2.0, "alpha": 0.25}),
    "poly1_focal_loss": (sigmoid_focal, {"gamma": 1.5, "alpha": 0.25, "epsilon": -0.7}),
    "poly1_binary_cross_entropy": (sigmoid_focal, {"gamma": 0.0, "alpha": None, "epsilon": 1.5}),
    "sigmoid_soft_truncated_loss": (sigmoid_su_soft, {"k": 2.0}),
    "sigmoid_hard_truncated_loss": (sigmoid_su_hard, {"margin": 0.6}),
    "asymmetric_loss": (asymmetric, {"gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.1}),
    "sigmoid_reduced_focal_loss": (sigmoid_reduced_focal, {"gamma": 1.5, "threshold": 0.5}),
    "eqlv2_loss": (eqlv2, {}),
    "equalized_focal_loss": (efl, {"gamma": 1.5, "scale_factor": 4.0, "alpha": 0.3}),
}


def library_params(name, params):
    """The reference's parameters as the library function's keyword arguments."""
    if name == "poly1_binary_cross_entropy":
        return {"epsilon": params["epsilon"]}
    return dict(params)


def sigmoid_loss(f, logits, target, *, weight=None, ignore_index=-100, reduction="mean", **params):
    """The sigmoid family's contract: dense float targets or class indices with background C."""
    if target.is_floating_point():
        y, valid, count = target, torch.ones_like(logits, dtype=torch.bool), logits.numel()
    else:
        c = logits.shape[1]
        valid_loc = target != ignore_index
        labels = torch.where(valid_loc, target, c)
        y = torch.nn.functional.one_hot(labels, c + 1)[..., :c].movedim(-1, 1).to(logits.dtype)
        valid = valid_loc.unsqueeze(1).expand_as(logits)
        count = valid_loc.sum()
    loss = torch.where(valid, f(logits, y, **params), torch.zeros_like(logits))
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / count


# --- region family: overlaps of each class's pixels -----------------------------------------------


def region_inputs(x, target, activation="softmax", ignore_index=-100, mask=None):
    """Probabilities ``p`` and the target ``y`` as ``(N, C, S)``, both zero at the pixels not counted."""
    c = x.shape[1]
    z = x.flatten(2)
    p = z.softmax(1) if activation == "softmax" else z.sigmoid() if activation == "sigmoid" else z
    if target.is_floating_point():
        y, counted = target.flatten(2), torch.ones_like(z[:, 0], dtype=torch.bool)
    else:
        t = target.flatten(1)
        counted = t != ignore_index
        y = torch.stack([(t == k) & counted for k in range(c)], 1).to(z.dtype)  # C (sigmoid): no class
    if mask is not None:
        counted = counted & mask.flatten(1)
    m = counted.unsqueeze(1).to(z.dtype)
    return p * m, y * m, m


def _reduce_region(f, weight, include_background, reduction):
    first = 0 if include_background else 1
    f = f[..., first:]
    if weight is not None:
        f = f * weight[first:]
    return f if reduction == "none" else f.sum() if reduction == "sum" else f.mean()


def dice(x, target, *, activation="softmax", squared_pred=False, jaccard=False, weight=None, ignore_index=-100,
         mask=None, include_background=True, batch=False, smooth_nr=1e-5, smooth_dr=1e-5, reduction="mean"):
    """Dice (V-Net): ``1 - (2 sum p y + s) / (sum p + sum y + s)``; Jaccard: ``(2 tp + s) / (2 union + s)``."""
    p, y, _ = region_inputs(x, target, activation, ignore_index, mask)
    dims = (0, 2) if batch else (2,)
    tp = (p * y).sum(dims)
    total = ((p ** 2).sum(dims) + (y ** 2).sum(dims)) if squared_pred else (p.sum(dims) + y.sum(dims))
    f = 1 - (2 * tp + smooth_nr) / ((2 * (total - tp) if jaccard else total) + smooth_dr)
    return _reduce_region(f, weight, include_background, reduction)


def tversky(x, target, *, alpha=0.5, beta=0.5, gamma=None, activation="softmax", weight=None, ignore_index=-100,
            mask=None, include_background=True, batch=False, smooth_nr=1e-5, smooth_dr=1e-5, reduction="mean"):
    """Tversky (Salehi et al.): ``1 - (tp + s) / (tp + alpha FP + beta FN + s)``; focal (Abraham and Khan):
    that to the power ``1 / gamma``."""
    p, y, m = region_inputs(x, target, activation, ignore_index, mask)
    dims = (0, 2) if batch else (2,)
    tp, fp, fn = (p * y).sum(dims), (p * (1 - y) * m).sum(dims), ((1 - p) * y * m).sum(dims)
    f = 1 - (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)
    if gamma is not None:
        f = f ** (1 / gamma)
    return _reduce_region(f, weight, include_background, reduction)


def unified(x, target, *, form="asymmetric", lambda_focal=0.5, delta=0.6, gamma=0.5, activation="softmax",
            ignore_index=-100, mask=None, batch=False, smooth_nr=1e-5, smooth_dr=1e-5):
    """Yeung et al.'s unified focal loss, written out per class: class 0 the background, the others rare."""
    if x.shape[1] == 1:  # binary: the channel is the foreground
        x = torch.cat([torch.zeros_like(x), x], 1) if activation == "sigmoid" else torch.cat([1 - x, x], 1)
        activation = "softmax" if activation == "sigmoid" else None
        if target.is_floating_point():
            target = torch.cat([1 - target, target], 1)
    p, y, m = region_inputs(x, target, activation, ignore_index, mask)
    c = x.shape[1]
    w = torch.tensor([1 - delta] + [delta] * (c - 1), dtype=p.dtype).view(1, c, 1)
    asymmetric = form == "asymmetric"
    g = torch.tensor([gamma] + [0.0 if asymmetric else gamma] * (c - 1), dtype=p.dtype).view(1, c, 1)
    e = torch.tensor([1.0 if asymmetric else 1 - gamma] + [1 - gamma] * (c - 1), dtype=p.dtype)
    q = x.flatten(2).softmax(1) if activation == "softmax" else x.flatten(2)
    focal = -(w * (1 - q) ** g * y * torch.log(q)).sum(1)
    focal_mean = focal.sum() / m.sum().clamp_min(1)
    dims = (0, 2) if batch else (2,)
    tp, fn, fp = (p * y).sum(dims), ((1 - p) * y * m).sum(dims), (p * (1 - y) * m).sum(dims)
    mti = (tp + smooth_nr) / (tp + delta * fn + (1 - delta) * fp + smooth_dr)
    return lambda_focal * focal_mean + (1 - lambda_focal) * ((1 - mti) ** e).mean()
