"""Tracker: metrics.jsonl + TensorBoard on the main rank, nothing on other ranks."""

from __future__ import annotations

import numpy as np

from vfmtok.training.tracker import Tracker, read_metrics


def test_log_and_read_back(tmp_path):
    t = Tracker(tmp_path / "run")
    t.log(1, {"loss": 0.5, "lr": 1e-4})
    t.log(2, {"loss": 0.25})
    t.log_image(2, "recon", np.zeros((8, 8, 3), dtype=np.uint8))
    t.close()
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[1]["loss"] == 0.25
    assert any((tmp_path / "run" / "tb").iterdir())


def test_disabled_tracker_writes_nothing(tmp_path):
    t = Tracker(tmp_path / "other", enabled=False)
    t.log(1, {"loss": 1.0})
    t.close()
    assert not (tmp_path / "other").exists()
    assert read_metrics(tmp_path / "other") == []
