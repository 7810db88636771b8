"""polyfocal: the cross-entropy family of losses for PyTorch, exact, stable and consistent.

    >>> import polyfocal as pf
    >>> loss = pf.focal_loss(logits, target, gamma=2.0)          # doctest: +SKIP
    >>> criterion = pf.build_loss("poly1_cross_entropy", epsilon=2.0)

Each loss is declared once, beside its function (``polyfocal._declare``); the lists below are
read from those declarations.
"""

# the families first, in the order their losses are listed (the declarations' order)
from . import softmax, longtail, adafocal, sigmoid, asymmetric, gradient_ratio, gfl, ghm, region, region_focal  # noqa: I001
from . import calibration, modules, registry
from ._backend import get_backend, set_backend, use_backend
from ._background import wait_for_compiles
from ._errors import InputError, InputTypeError, InputValueError
from .adafocal import *  # noqa: F401,F403 (AdaFocal's loss, Module and update rule)
from .asymmetric import *  # noqa: F401,F403 (ASL, multi-label and single-label)
from .gradient_ratio import *  # noqa: F401,F403 (EQLv2, the equalized focal loss and their Modules)
from .gfl import *  # noqa: F401,F403 (the generalized focal losses, VFL, decode_distribution)
from .ghm import *  # noqa: F401,F403 (GHM-C, GHM-R and their Modules)
from .distill import LinearDistillationLoss, linear_distillation_loss
from .distill_topk import topk_distillation_loss
from .distill_parallel import vocab_parallel_linear_distillation_loss
from .linear import LinearLoss, linear_loss
from .longtail import *  # noqa: F401,F403 (class-balanced weights, priors, logit adjustment, LDAM, reduced focal)
from .modules import *  # noqa: F401,F403 (LossModule and every stateless loss's Module)
from .region import *  # noqa: F401,F403 (Dice, Tversky, focal Tversky)
from .region_focal import *  # noqa: F401,F403 (Dice-focal, Tversky-focal, unified focal)
from .registry import *  # noqa: F401,F403 (build_loss, available_losses, LOSS_ALIASES, ...)
from .sigmoid import *  # noqa: F401,F403 (BCE, sigmoid focal, Poly-1 focal, Su's truncations)
from .softmax import *  # noqa: F401,F403 (cross-entropy and its polynomial family)
from .vocab_parallel import vocab_parallel_linear_loss

__version__ = "0.1.0"

__all__ = [
    *softmax.__all__, *longtail.__all__, *adafocal.__all__, *sigmoid.__all__, *asymmetric.__all__,
    *gradient_ratio.__all__, *gfl.__all__, *ghm.__all__, *region.__all__, *region_focal.__all__,
    *modules.__all__, *registry.__all__,
    # the fused linear head
    "linear_loss", "LinearLoss", "vocab_parallel_linear_loss",
    # fused distillation
    "linear_distillation_loss", "LinearDistillationLoss", "topk_distillation_loss",
    "vocab_parallel_linear_distillation_loss",
    # engines
    "set_backend", "get_backend", "use_backend", "wait_for_compiles",
    # a caller's mistakes (ValueError / TypeError subclasses)
    "InputError", "InputValueError", "InputTypeError",
]
