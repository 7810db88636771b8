"""One rank of the 2-process test of WindowNormalizer under Lightning's DDP in test_lightning.py (not collected).

    python _lightning_ddp_worker.py RANK WORLD_SIZE STORE_FILE DATA_FILE OUT_FILE

Sets the environment Lightning reads for processes launched outside it (so it launches none), trains
one step of accumulation 2 x micro-batch 2 on its half of the 8 sequences (Lightning's distributed
sampler) and saves the parameters.
"""

from __future__ import annotations

import os
import sys

import torch


def main() -> None:
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    data = torch.load(sys.argv[4])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(data["port"]), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    import lightning  # noqa: PLC0415
    from test_lightning import WindowNormalizer, one_step, tokens  # noqa: PLC0415 (the test's model and data)

    seen = {"tokens": []}

    class Record(lightning.pytorch.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["world_size"] = trainer.world_size
            seen["tokens"].append(int(tokens(batch)))

    params = one_step(data["loss"], data["params"], 2, 2, [WindowNormalizer(tokens), Record()], strategy="ddp",
                      devices=world)
    torch.save((params, seen), sys.argv[5])
    if torch.distributed.is_initialized():  # Lightning leaves the gloo group up; its threads must stop before exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # no interpreter teardown, as tests/_gloo.serve_rank ends its workers: the results are saved (a gloo
    # worker aborted in its group's thread destructors at exit in a CI run, after saving)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
