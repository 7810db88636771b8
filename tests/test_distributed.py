"""Training under torchrun: 2 CPU processes (gloo) take the steps of 1 process on the global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from polyfocal.cli import main
from polyfocal.experiments.distributed import Group, current

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo")


def test_group_of_one_and_shards():
    alone = current()
    assert (alone.rank, alone.world, alone.main) == (0, 1, True)
    value = torch.tensor(3)
    assert alone.total(value) is value
    index = torch.arange(7)
    # every world-th example from rank: the ranks' shards partition the batch, sizes differ by at most 1
    shards = [Group(rank, 3).shard(index) for rank in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]


def _compare(out, extra, launcher=()):
    argv = [*launcher, "-m", "polyfocal", "compare", "--seeds", "0,1", "--quiet", "--out", str(out), *extra]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo" if sys.platform.startswith("linux") else "lo0",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "results.json").read_text()), proc.stdout


CASES = {
    # dense: positive-count normaliser all-reduced, GHM-C's histogram and moving average all-reduced,
    # boxes with QFL's IoU target; 24-image batches of 64 split 12 + 12, the last batch 16 -> 8 + 8
    "dense-toy": ["--task", "dense-toy", "--n-train", "64", "--batch-size", "24", "--epochs", "2",
                  "--losses", "sigmoid_focal+l1,ghm_c+l1,qfl+dfl"],
    # softmax, odd batches: 7 examples split 4 + 3 (the example-count normaliser is all-reduced)
    "digits-lt": ["--task", "digits-lt", "--imbalance", "10", "--batch-size", "7", "--epochs", "1",
                  "--losses", "ce,focal,poly1:epsilon=2"],
}


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("case", list(CASES))
def test_torchrun_two_processes_match_one(tmp_path, case):
    if case == "digits-lt":
        pytest.importorskip("sklearn")
    single, _ = _compare(tmp_path / "single", CASES[case])
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    double, stdout = _compare(tmp_path / "double", CASES[case], launcher)
    assert single["config"]["processes"] == 1 and double["config"]["processes"] == 2
    assert stdout.count("wrote ") == 3  # rank 0 alone reports
    assert len(double["runs"]) == len(single["runs"]) == 2 * len(CASES[case][-1].split(","))
    for one, two in zip(single["runs"], double["runs"]):
        assert (one["loss"], one["seed"]) == (two["loss"], two["seed"])
        for metric, value in one["metrics"].items():
            assert two["metrics"][metric] == pytest.approx(value, rel=1e-4, abs=1e-5), (one["loss"], metric)
        assert two["curves"]["train_loss"] == pytest.approx(one["curves"]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("command", [
    ["sweep", "--task", "dense-toy", "--loss", "sigmoid_focal", "--param", "gamma=0:2"],
    ["reproduce", "--quick"],
])
def test_single_process_commands_refuse_torchrun(monkeypatch, capsys, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    assert "WORLD_SIZE=2" in capsys.readouterr().err
