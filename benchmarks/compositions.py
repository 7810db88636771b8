"""The plain-PyTorch compositions that users copy today, written from each paper's formula in the
style of the libraries they come from (torchvision, kornia, the PolyLoss listing, mmdetection).

They are the baselines of the benchmark, not part of polyfocal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def torchvision_sigmoid_focal(logits, one_hot, gamma=2.0, alpha=0.25):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * one_hot + (1 - alpha) * (1 - one_hot)
    return (alpha_t * loss).sum() / one_hot.sum().clamp(min=1)


def poly1_focal_listing(logits, one_hot, epsilon=1.0, gamma=2.0, alpha=0.25):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    alpha_t = alpha * one_hot + (1 - alpha) * (1 - one_hot)
    focal = alpha_t * ce * ((1 - p_t) ** gamma)
    return (focal + epsilon * (1 - p_t) ** (gamma + 1)).sum() / one_hot.sum().clamp(min=1)


def mmdet_quality_focal(logits, soft, beta=2.0):
    p = logits.sigmoid()
    scale = (p - soft).abs().pow(beta)
    return (F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * scale).sum() / logits.shape[0]


def kornia_softmax_focal(logits, target, gamma=2.0, alpha=1.0):
    p = logits.softmax(1)
    log_p = logits.log_softmax(1)
    one_hot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    focal = -alpha * torch.pow(1.0 - p, gamma) * log_p
    return (one_hot * focal).sum(1).mean()


def poly1_cross_entropy_listing(logits, target, epsilon=1.0):
    one_hot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    p_t = (one_hot * logits.softmax(1)).sum(1)
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce + epsilon * (1 - p_t)).mean()


def polyn_cross_entropy_listing(logits, target, epsilons=(1.0,)):
    one_hot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    p_t = (one_hot * logits.softmax(1)).sum(1)
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce + sum(eps * (1 - p_t) ** j for j, eps in enumerate(epsilons, 1))).mean()


def mmdet_ghm_c(logits, one_hot, bins=10):
    """GHM-C as mmdetection writes it: a Python loop over bins with a host sync per bin."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    weights = torch.zeros_like(logits)
    g = (logits.sigmoid().detach() - one_hot).abs()
    total = max(float(logits.numel()), 1.0)
    n = 0
    for i in range(bins):
        inside = (g >= edges[i]) & (g < edges[i + 1])
        count = inside.sum().item()
        if count > 0:
            weights[inside] = total / count
            n += 1
    if n > 0:
        weights = weights / n
    return F.binary_cross_entropy_with_logits(logits, one_hot, weights, reduction="sum") / total
