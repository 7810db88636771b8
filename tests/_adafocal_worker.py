"""One rank of the 2-process gloo test of AdaFocalLoss.update in test_calibration_losses.py (not collected).

    python _adafocal_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Rank 0 holds the first ``split`` validation predictions, rank 1 the rest (uneven on purpose); each
updates its own AdaFocalLoss and saves its gammas and bin edges.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import polyfocal as pf


def main() -> None:
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store_file, data_file, out_file = sys.argv[3:6]
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    try:
        data = torch.load(data_file)
        rows = slice(0, data["split"]) if rank == 0 else slice(data["split"], None)
        module = pf.AdaFocalLoss(num_bins=7)
        module.update(data["probs"][rows], data["labels"][rows])
        torch.save((module.gammas, module.bin_edges), out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
