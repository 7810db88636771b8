"""Hugging Face Transformers: any polyfocal loss as ``Trainer(compute_loss_func=...)``.

    from polyfocal.integrations.transformers import compute_loss_func
    trainer = Trainer(model, args, train_dataset=data,
                      compute_loss_func=compute_loss_func("focal_loss", task="causal_lm", gamma=2.0))

Trainer passes ``num_items_in_batch``: the number of labelled tokens (or examples) in the whole
gradient-accumulation window, summed over devices with ``average_tokens_across_devices``. The
loss is then the window's sum divided by that number, so one optimizer step is the same whether
the window is 1 x 8 or 4 x 2 micro-batches with uneven token counts (averaging per-micro-batch
means is not). Without it (evaluation), the loss is the batch's own mean.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .._errors import InputValueError
from ..linear import linear_loss
from ..registry import softmax_loss_function
from ._versions import require

transformers = require("transformers", "4.46", "transformers")  # compute_loss_func and num_items_in_batch

__all__ = ["compute_loss_func", "use_linear_loss", "TASKS"]

#: how each task lines logits up with labels
TASKS = ("causal_lm", "token_classification", "sequence_classification")


def _logits(outputs) -> Tensor:
    logits = outputs.get("logits") if hasattr(outputs, "get") else getattr(outputs, "logits", None)
    if not isinstance(logits, Tensor):
        raise InputValueError(f"the model's outputs must hold `logits`; got {type(outputs).__name__} with "
                              f"{sorted(outputs.keys()) if hasattr(outputs, 'keys') else 'no logits'}")
    return logits


def _rows(task: str, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(N, C)`` and class indices ``(N,)`` for the task (causal LM: token t predicts t + 1)."""
    expected = {"causal_lm": 3, "token_classification": 3, "sequence_classification": 2}[task]
    if logits.dim() != expected or labels.shape != logits.shape[:-1]:
        raise InputValueError(f"{task} needs logits of {expected} dimensions and labels of their shape without the "
                              f"last; got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}")
    if task == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device)


def compute_loss_func(loss: str = "cross_entropy", *, task: str, ignore_index: int = -100, **params) -> Callable:
    """The callable ``Trainer(compute_loss_func=...)`` expects, ``(outputs, labels, num_items_in_batch=None)``.

    Args:
        loss: a softmax-family polyfocal loss by name or short name (``"focal"``, ``"poly1"``...).
        task: ``"causal_lm"`` (labels shifted by one inside, as the models do), ``"token_classification"``
            or ``"sequence_classification"``.
        ignore_index: the label of unlabelled positions (Transformers' -100).
        **params: the loss's own keyword arguments (``gamma=2``, ``epsilon=1``, ``label_smoothing=0.1``).
    """
    if task not in TASKS:
        raise InputValueError(f"`task` must be one of {TASKS}; got {task!r}")
    function = softmax_loss_function(loss)

    def loss_func(outputs, labels: Tensor, num_items_in_batch=None) -> Tensor:
        logits, target = _rows(task, _logits(outputs), labels)
        return function(logits, target, ignore_index=ignore_index, reduction="mean",
                        normalizer=num_items_in_batch, **params)

    return loss_func


def use_linear_loss(model, loss: str = "cross_entropy", **params):
    """Route a causal LM's training loss through :func:`polyfocal.linear_loss`: ``model(input_ids,
    labels=...)`` then computes the loss from the decoder's hidden states and the output layer a chunk of
    tokens at a time, never materialising the ``(B, T, V)`` logits (its output has ``logits=None``).

    The labels are shifted inside, -100 is ignored, and Trainer's ``num_items_in_batch`` divides the sum
    (as the models' own loss does); without labels the model runs unchanged. A model configured with
    ``final_logit_softcapping`` (Gemma) gets it as ``softcap``. Returns ``model``, patched in place.
    """
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None or not hasattr(head, "weight"):
        raise InputValueError(f"`model` must be a causal LM with a decoder and an output layer; got {type(model).__name__}")
    softmax_loss_function(loss)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    original = model.forward
    output_class = transformers.modeling_outputs.CausalLMOutputWithPast

    def forward(input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        kwargs.pop("logits_to_keep", None)
        outputs = decoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs[0]
        value = linear_loss(hidden[:, :-1], head.weight, labels[:, 1:].to(hidden.device), loss=loss,
                            head_bias=getattr(head, "bias", None), softcap=softcap, normalizer=num_items_in_batch,
                            **params)
        return output_class(loss=value, logits=None, hidden_states=getattr(outputs, "hidden_states", None),
                            attentions=getattr(outputs, "attentions", None))

    model.forward = forward
    return model
