"""The private APIs polyfocal relies on (``polyfocal._compat``) exist in this PyTorch and Python:
a release that removes one fails here, by name, not deep inside a fused kernel or an error path."""

import argparse

import torch

from polyfocal import _compat


def test_every_private_name_exists_here():
    assert _compat.missing() == []


def test_saved_tensor_hooks_are_lifted_and_restored():
    packed = []
    x = torch.ones(2, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(1) or t, lambda t: t):
        with _compat.saved_tensor_hooks_suspended():
            (x * x).sum()  # saves x twice, past no hook
        assert not packed
        (x * x).sum()
    assert len(packed) == 2  # the caller's hooks came back


def test_subparsers_lists_the_commands():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("go")
    (action,) = _compat.subparsers(parser)
    assert set(action.choices) == {"go"}


def test_recompile_limits_are_raised_and_put_back_even_on_an_error():
    config = torch._dynamo.config
    before = (config.recompile_limit, config.accumulated_recompile_limit)
    with _compat.recompile_limits(300):
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (300, 4800)
    assert (config.recompile_limit, config.accumulated_recompile_limit) == before
    try:
        with _compat.recompile_limits(300):
            raise KeyError("inside")
    except KeyError:
        pass
    assert (config.recompile_limit, config.accumulated_recompile_limit) == before
