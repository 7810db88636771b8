"""What a new user meets first: ``import polyfocal`` and ``polyfocal --help`` cost little beyond ``import torch``,
because dynamo, the experiments, plotting and the integrations are imported only where they are used."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: imported only by what uses them: the fused engines (dynamo), plots and experiments, the CLI's commands
HEAVY = ("torch._dynamo", "torch._inductor", "triton", "matplotlib", "optuna", "sklearn", "torchmetrics",
         "transformers", "polyfocal.plots")


def imported_by(code: str) -> set[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(result.stdout.split())


def test_import_polyfocal_pulls_in_nothing_heavy():
    assert imported_by("import polyfocal") == set()


def test_a_loss_call_on_the_eager_engine_pulls_in_nothing_heavy():
    code = ("import torch, polyfocal as pf\n"
            "pf.focal_loss(torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))).backward()")
    assert imported_by(code) == set()


def test_help_pulls_in_nothing_heavy():
    """Every command's ``--help`` in turn, in one interpreter (what the first imports, the rest would find)."""
    commands = [[], ["compare"], ["sweep"], ["reproduce"], ["explain", "curves"]]
    code = ("import contextlib, io\nfrom polyfocal.cli import main\n"
            f"for command in {commands!r}:\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        main([*command, '--help'])")
    assert imported_by(code) == set()


@pytest.mark.slow
def test_the_fused_engine_still_compiles_after_a_lazy_dynamo_import():
    code = ("import torch, polyfocal as pf\n"
            "with pf.use_backend('fused'):\n"
            "    pf.focal_loss(torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))).backward()")
    assert "torch._dynamo" in imported_by(code)
