"""polyfocal: the cross-entropy family of losses for PyTorch, exact, stable and consistent.

    >>> import polyfocal as pf
    >>> loss = pf.focal_loss(logits, target, gamma=2.0)          # doctest: +SKIP
    >>> criterion = pf.build_loss("poly1_cross_entropy", epsilon=2.0)
"""

from ._backend import get_backend, set_backend, use_backend
from ._errors import InputError, InputTypeError, InputValueError
from .gfl import (decode_distribution, distribution_focal_loss, generalized_focal_loss,
                  quality_focal_loss, varifocal_loss)
from .ghm import GHMCLoss, GHMRLoss, ghm_c_loss, ghm_r_loss
from .modules import (BinaryCrossEntropyLoss, CrossEntropyLoss, DistributionFocalLoss, FocalLoss,
                      GeneralizedFocalLoss, HardTruncatedLoss, LossModule, Poly1BinaryCrossEntropyLoss,
                      Poly1CrossEntropyLoss, Poly1FocalLoss, PolyLoss, PolyNCrossEntropyLoss,
                      QualityFocalLoss, SigmoidFocalLoss, SigmoidHardTruncatedLoss,
                      SigmoidSoftTruncatedLoss, SoftTruncatedLoss, TruncatedCrossEntropyLoss,
                      VarifocalLoss)
from .registry import LOSS_ALIASES, available_losses, build_loss, get_loss_function, register_loss
from .sigmoid import (binary_cross_entropy, poly1_binary_cross_entropy, poly1_focal_loss,
                      sigmoid_focal_loss, sigmoid_hard_truncated_loss, sigmoid_soft_truncated_loss)
from .softmax import (cross_entropy, focal_loss, hard_truncated_loss, poly1_cross_entropy, poly_loss,
                      polyn_cross_entropy, soft_truncated_loss, truncated_cross_entropy)

__version__ = "0.1.0"

__all__ = [
    # softmax family
    "cross_entropy", "focal_loss", "poly1_cross_entropy", "polyn_cross_entropy", "poly_loss",
    "truncated_cross_entropy", "soft_truncated_loss", "hard_truncated_loss",
    # sigmoid family
    "binary_cross_entropy", "sigmoid_focal_loss", "poly1_focal_loss", "poly1_binary_cross_entropy",
    "sigmoid_soft_truncated_loss", "sigmoid_hard_truncated_loss",
    # generalized focal loss, varifocal, GHM
    "quality_focal_loss", "varifocal_loss", "distribution_focal_loss", "generalized_focal_loss",
    "decode_distribution", "ghm_c_loss", "ghm_r_loss", "GHMCLoss", "GHMRLoss",
    # Modules and registry
    "LossModule", "CrossEntropyLoss", "FocalLoss", "Poly1CrossEntropyLoss", "PolyNCrossEntropyLoss",
    "PolyLoss", "TruncatedCrossEntropyLoss", "SoftTruncatedLoss", "HardTruncatedLoss",
    "BinaryCrossEntropyLoss", "SigmoidFocalLoss", "Poly1FocalLoss", "Poly1BinaryCrossEntropyLoss",
    "SigmoidSoftTruncatedLoss", "SigmoidHardTruncatedLoss", "QualityFocalLoss", "VarifocalLoss",
    "DistributionFocalLoss", "GeneralizedFocalLoss",
    "build_loss", "available_losses", "get_loss_function", "register_loss", "LOSS_ALIASES",
    # engines
    "set_backend", "get_backend", "use_backend",
    # a caller's mistakes (ValueError / TypeError subclasses)
    "InputError", "InputValueError", "InputTypeError",
]
