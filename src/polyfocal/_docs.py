"""Docstring fragments shared by the losses of one family, filled in by :func:`fill`."""

SOFTMAX_ARGS = """logits: ``(N, C, *)`` unnormalised scores, C >= 2.
        target: class indices ``(N, *)`` (integer) or class probabilities ``(N, C, *)`` (float,
            one-hot or soft). With probabilities the loss is the expectation over the target
            distribution, ``sum_c y_c phi(p_c)``.
        weight: ``(C,)`` per-class rescaling, as ``torch.nn.functional.cross_entropy``; for
            class indices it is also part of the mean's denominator.
        ignore_index: class-index value to skip (any negative value is safe). Default -100.
        label_smoothing: in [0, 1], mixes the target with the uniform distribution, as
            ``torch.nn.functional.cross_entropy``.
        reduction: ``"none"`` (shape ``(N, *)``), ``"sum"`` or ``"mean"``. Mean divides by
            the sum of ``weight[target]`` over non-ignored examples (their count without
            ``weight``) for class indices, by ``N * prod(*)`` for probabilities. An empty or
            all-ignored batch gives 0 with zero gradients.
        normalizer: with ``reduction="mean"``, divide the sum by this number or scalar tensor
            instead (for example the number of positive anchors).
        validate: check target values (costs a host sync). ``None``: on CPU outside
            ``torch.compile``; ``True``: always; ``False``: never.
        backend: ``"auto"`` (the default set by :func:`polyfocal.set_backend`), ``"reference"``,
            ``"eager"``, ``"fused"`` or ``"triton"``; see the README's Engines section."""

SIGMOID_ARGS = """logits: any shape; ``(N, C, *)`` when ``target`` holds class indices.
        target: float in [0, 1] with the shape of ``logits`` (binary or soft); or class indices
            ``(N, *)`` where the value C means background (every class negative); or a pair
            ``(labels, scores)`` giving the label's class the float score.
        weight: per-element rescaling, broadcastable to ``logits`` (not part of the mean's count).
        ignore_index: with class indices, the label to skip. Default -100.
        reduction: ``"none"`` (the per-element loss, the shape of ``logits``), ``"sum"`` or
            ``"mean"``. Mean divides by the number of elements for float targets, by the number
            of non-ignored locations ``(N, *)`` for class indices (never by the C one-hot slots).
        normalizer: with ``reduction="mean"``, divide the sum by this number or scalar tensor
            instead (RetinaNet divides by the number of positive anchors).
        validate: check target values (costs a host sync). ``None``: on CPU outside
            ``torch.compile``; ``True``: always; ``False``: never.
        backend: ``"auto"`` (the default set by :func:`polyfocal.set_backend`), ``"reference"``,
            ``"eager"``, ``"fused"`` or ``"triton"``; see the README's Engines section."""

REGION_ARGS = """logits: ``(N, C, *spatial)`` scores, at least one spatial dimension (3-d volumes: ``(N, C, D, H, W)``).
        target: class indices ``(N, *spatial)`` (integer; with ``activation="sigmoid"`` the value C means
            none of the classes) or probabilities of the logits' shape (float, one-hot or soft).
        activation: ``"softmax"`` over the C channels (C >= 2), ``"sigmoid"`` per channel (one channel:
            binary), or None when ``logits`` already are probabilities (MONAI's default).
        weight: ``(C,)`` per-class factor of the region terms (MONAI's ``weight``); it does not divide.
        ignore_index: class-index value whose pixels count nowhere: not in any class's sums, not in
            the per-pixel term. Default -100.
        mask: ``(N, *spatial)`` bool, the pixels to count (padding, unlabelled regions) beside
            ``ignore_index``; the way to leave pixels out with a probability target.
        include_background: False leaves class 0 out of the region terms (it stays in the softmax);
            with one channel, a ValueError (there is no background channel to leave out).
        batch: sum over the whole batch per class, not per image; across ranks too where a process group
            of 2+ ranks runs (``distributed``), since the Dice of a sum is not the sum of Dices.
        smooth_nr, smooth_dr: added to each term's numerator and denominator (MONAI's names and
            defaults). A class with no counted pixel and a zero denominator has the value 0.
        distributed: all-reduce the whole-batch sums (``batch=True``) across ranks: None (when a process
            group of 2+ ranks runs), True or False. Every rank's loss is then the whole batch's; backward
            all-reduces the gradient of the sums, so that DDP's average of the ranks' parameter gradients
            is the gradient of the whole batch's loss.
        validate: check target values (costs a host sync). ``None``: on CPU outside
            ``torch.compile``; ``True``: always; ``False``: never.
        backend: the engine of a per-pixel term (Dice-focal, Tversky-focal); the region sums and terms have
            one, autograd, whichever is named (the name is checked)."""

RETURNS = """Returns:
        The loss: a scalar, or the per-element loss for ``reduction="none"``, in the dtype of
        ``logits`` (fp32 for fp16/bf16 inputs under autocast); computed in fp32 at least."""


def fill(func):
    """Replace ``{softmax_args}``, ``{sigmoid_args}`` and ``{returns}`` in ``func``'s docstring
    (there is none under ``python -OO``)."""
    if func.__doc__ is not None:
        func.__doc__ = func.__doc__.format(softmax_args=SOFTMAX_ARGS, sigmoid_args=SIGMOID_ARGS,
                                           region_args=REGION_ARGS, returns=RETURNS)
    return func
