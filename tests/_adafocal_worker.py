"""One rank of the 2-process gloo test of AdaFocalLoss.update in test_calibration_losses.py (not collected).

    python _adafocal_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Rank 0 holds the first ``split`` validation predictions, rank 1 the rest (uneven on purpose); each
updates its own AdaFocalLoss and saves its gammas and bin edges.
"""

from __future__ import annotations

import polyfocal as pf
from _gloo import serve_rank


def run(rank: int, data: dict):
    rows = slice(0, data["split"]) if rank == 0 else slice(data["split"], None)
    module = pf.AdaFocalLoss(num_bins=7)
    module.update(data["probs"][rows], data["labels"][rows])
    return module.gammas, module.bin_edges


if __name__ == "__main__":
    serve_rank(run)
