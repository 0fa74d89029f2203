"""Atomic checkpoints: round trip, ``latest`` pointer, pruning, crash safety and RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vfmtok.config import ConfigBase
from vfmtok.training import checkpoint as ckpt
from vfmtok.training.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _weights(v: float) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.full((2, 3), v), "a.bias": torch.arange(3.0) + v}


def test_round_trip_with_latest_and_config(tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Cfg(ConfigBase):
        width: int = 3

    path = save_checkpoint(tmp_path, 7, _weights(1.0), {"epoch": 2, "opt": {"x": torch.ones(2)}}, Cfg(), _weights(2.0))
    assert path.name == "step-00000007"
    latest = latest_checkpoint(tmp_path)
    assert latest == (path, 7)
    loaded = load_checkpoint(latest.path)
    assert torch.equal(loaded["model"]["a.weight"], _weights(1.0)["a.weight"])
    assert torch.equal(loaded["ema"]["a.bias"], _weights(2.0)["a.bias"])
    assert loaded["state"]["step"] == 7 and loaded["state"]["epoch"] == 2
    assert Cfg.load(path / "config.json") == Cfg()


def test_keep_prunes_old_and_latest_tracks_newest(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, _weights(step), {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-00000020", "step-00000030"]
    assert latest_checkpoint(tmp_path).step == 30
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _weights(1.0), {"epoch": 0})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, _weights(2.0), {"epoch": 0})
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path).step == 1
    assert sorted(p.name for p in root.iterdir() if p.name.startswith((".step", "step"))) == ["step-00000001"]


def test_stale_pointer_falls_back_to_newest_complete(tmp_path):
    save_checkpoint(tmp_path, 3, _weights(3.0), {})
    save_checkpoint(tmp_path, 4, _weights(4.0), {})
    (tmp_path / "checkpoints" / "latest").write_text("step-00000099\n")
    (tmp_path / "checkpoints" / "step-00000005").mkdir()  # incomplete: no state.pt
    assert latest_checkpoint(tmp_path).step == 4
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "checkpoints" / "step-00000005")


def test_rng_capture_restore_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, _weights(0.0), {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state = load_checkpoint(latest_checkpoint(tmp_path).path)["state"]  # weights_only=True load
    restore_rng_state(state["rng"])
    got = (random.random(), np.random.rand(3), torch.rand(3))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def _truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damaged", ["state.pt", "model.safetensors", "ema.safetensors"])
def test_load_latest_falls_back_past_a_damaged_newest_checkpoint(tmp_path, caplog, damaged):
    from vfmtok.training.checkpoint import load_latest_checkpoint

    for step in (2, 4):
        save_checkpoint(tmp_path, step, _weights(step), {"epoch": 0}, ema_state=_weights(-step))
    _truncate(tmp_path / "checkpoints" / "step-00000004" / damaged)
    assert latest_checkpoint(tmp_path).step == 4  # finding a checkpoint reads no file ...
    found, data = load_latest_checkpoint(tmp_path)  # ... loading one verifies every file
    assert found.step == 2 and data["state"]["step"] == 2
    assert torch.equal(data["model"]["a.weight"], _weights(2)["a.weight"])
    warned = caplog.text
    assert f"step-00000004/{damaged}" in warned and "falling back to step-00000002" in warned
    # the next save replaces the damaged checkpoint
    save_checkpoint(tmp_path, 4, _weights(4), {"epoch": 0}, ema_state=_weights(-4))
    assert load_latest_checkpoint(tmp_path)[0].step == 4


def test_load_latest_all_damaged_or_none(tmp_path):
    from vfmtok.hub import ModelLoadError
    from vfmtok.training.checkpoint import load_latest_checkpoint

    assert load_latest_checkpoint(tmp_path) is None
    for step in (1, 2):
        save_checkpoint(tmp_path, step, _weights(step), {})
        _truncate(tmp_path / "checkpoints" / f"step-{step:08d}" / "state.pt")
    with pytest.raises(ModelLoadError, match=r"no intact checkpoint.*step-00000002, step-00000001"):
        load_latest_checkpoint(tmp_path)


def test_latest_pointer_to_a_missing_directory_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, _weights(1.0), {})
    save_checkpoint(tmp_path, 2, _weights(2.0), {})
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")
    assert latest_checkpoint(tmp_path).step == 2


def test_save_removes_temporaries_of_a_killed_save(tmp_path):
    stale = tmp_path / "checkpoints" / ".step-00000003-abc"
    stale.mkdir(parents=True)
    (stale / "state.pt").write_bytes(b"half")
    save_checkpoint(tmp_path, 3, _weights(3.0), {})
    assert not stale.exists() and latest_checkpoint(tmp_path).step == 3
