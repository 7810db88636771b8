"""The README's timm and Ultralytics blocks run as written (vision environment only): a tiny timm model,
and a tiny YOLO dataset in the working folder as ``data.yaml`` with Ultralytics' defaults made small."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
pytest.importorskip("timm")
pytest.importorskip("ultralytics")

from test_readme import python_blocks, run_block  # noqa: E402
from test_ultralytics import write_dataset  # noqa: E402

pytestmark = pytest.mark.vision


def block_with(phrase: str) -> str:
    (block,) = [b for b in python_blocks() if phrase in b]
    return block


def test_the_timm_block_runs():
    import timm
    import timm.task  # noqa: F401 (the block reaches timm.task)

    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    namespace = run_block(block_with("polyfocal.integrations.timm"), {"timm": timm, "model": model})
    assert type(namespace["task"].criterion).__name__ == "FocalLoss"


@pytest.mark.slow
def test_the_ultralytics_block_runs(tmp_path, monkeypatch):
    from ultralytics.cfg import DEFAULT_CFG

    write_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)  # the block's data.yaml
    for name, value in dict(epochs=1, imgsz=64, batch=2, device="cpu", workers=0, plots=False, amp=False,
                            project=str(tmp_path / "runs"), verbose=False).items():
        monkeypatch.setattr(DEFAULT_CFG, name, value)  # Ultralytics' defaults, small: the block stays as written
    run_block(block_with("polyfocal.integrations.ultralytics"), {})
    assert list((tmp_path / "runs").rglob("last.pt"))
