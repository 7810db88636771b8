"""Run a worker script as the ranks of a gloo process group on the loopback interface (the 2-process
tests of test_ghm.py and test_linear.py). Not collected by pytest.

A worker is called as ``python WORKER RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE``: it joins the
group through the FileStore (no TCP port to pick), reads ``DATA_FILE`` and saves its results to
``OUT_FILE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def run_ranks(worker: Path, data, tmp_path: Path, world: int = 2, timeout: float = 90.0) -> list:
    """Save ``data``, run ``world`` ranks of ``worker`` on it, and return each rank's saved results."""
    torch.save(data, tmp_path / "data.pt")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo" if sys.platform.startswith("linux") else "lo0",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), str(world), str(tmp_path / "store"),
                               str(tmp_path / "data.pt"), str(tmp_path / f"out{rank}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in range(world)]
    logs = []
    deadline = time.monotonic() + timeout  # the process group itself times out after 30 s
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the distributed workers did not finish within {timeout:.0f} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{logs[rank]}"
    return [torch.load(tmp_path / f"out{rank}.pt") for rank in range(world)]


def serve_rank(run) -> None:
    """A worker's main: join the group its command line names, call ``run(rank, data)`` on DATA_FILE's
    contents and save what it returns to OUT_FILE."""
    from datetime import timedelta

    import torch.distributed as dist

    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store_file, data_file, out_file = sys.argv[3:6]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    torch.save(run(rank, torch.load(data_file)), out_file)
    # every rank past its last collective before any rank tears the group down: without it a rank that
    # destroyed its group first once made its peer abort in teardown ("terminate called without an active
    # exception", after both had saved their results: test_region's 2-rank test, once in CI and about once in
    # 20 runs on a loaded machine)
    dist.barrier()
    dist.destroy_process_group()
    # and no interpreter teardown: with the barrier it still aborted once more (test_region's 2-rank test in a
    # CI run of 20011dc, after both ranks had saved their results), in the destructors of the group's threads
    # at exit; the results are saved, and what is tested ends here
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def assert_shards_agree(ranks: list, case: int, want, **tolerance) -> None:
    """Each rank's case ``case`` holds ``(loss, hidden's gradient, its shard of the head's and the bias's
    gradients)``: the loss and hidden's gradient equal ``want``'s on every rank, the shards, concatenated in
    rank order, ``want``'s whole gradients."""
    for r in ranks:
        torch.testing.assert_close(r[case][0], want[0], **tolerance)
        torch.testing.assert_close(r[case][1], want[1], **tolerance)
    for part in (2, 3):
        torch.testing.assert_close(torch.cat([r[case][part] for r in ranks]), want[part], **tolerance)
