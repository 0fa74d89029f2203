"""Model directories: atomic weights, strict key checks with readable errors, Hub ids failing clearly offline."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from vfmtok.hub import ModelLoadError, check_state_dict, load_state_dict, resolve_model_dir, save_state_dict


def test_save_load_state_dict_roundtrip_and_permissions(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "sub" / "model.safetensors"
    save_state_dict(state, path)
    got = load_state_dict(path)
    assert set(got) == {"a", "b"} and torch.equal(got["a"], state["a"]) and torch.equal(got["b"], state["b"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_check_state_dict_names_missing_unexpected_and_shapes():
    expected = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    with pytest.raises(ModelLoadError) as e:
        check_state_dict(expected, {"w": torch.zeros(3, 2), "extra": torch.zeros(1)}, "ckpt.pt")
    msg = str(e.value)
    assert "ckpt.pt" in msg and "'b'" in msg and "'extra'" in msg and "w: expected (2, 2), got (3, 2)" in msg
    check_state_dict(expected, {"w": torch.ones(2, 2), "b": torch.ones(2)}, "ok")  # no error


def test_resolve_model_dir_local_and_errors(tmp_path, monkeypatch):
    assert resolve_model_dir(tmp_path) == tmp_path
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="got a file"):
        resolve_model_dir(f)
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_dir(tmp_path / "missing" / "dir")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="Offline"):
        resolve_model_dir("vfmtok-test-owner/no-such-model")
