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


def test_damaged_files_are_one_line_load_errors(tmp_path):
    from vfmtok.hub import torch_load_weights

    save_state_dict({"w": torch.ones(64, 64)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    for cut in (len(data) // 2, 20, 0):
        (tmp_path / "t.safetensors").write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match=r"t\.safetensors: truncated or corrupt safetensors file") as e:
            load_state_dict(tmp_path / "t.safetensors")
        assert "\n" not in str(e.value)
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(torch_load_weights(tmp_path / "ok.pt", "test file")["w"], torch.ones(3))
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:200])
    with pytest.raises(ModelLoadError, match=r"cut\.pt: cannot read this test file: the file is truncated or corrupt"):
        torch_load_weights(tmp_path / "cut.pt", "test file")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"junk\.pt: cannot read this test file: not a torch checkpoint"):
        torch_load_weights(tmp_path / "junk.pt", "test file")
    with pytest.raises(FileNotFoundError, match="test file not found"):
        torch_load_weights(tmp_path / "absent.pt", "test file")


def test_pickled_objects_are_refused_without_torch_advice(tmp_path):
    import argparse

    from vfmtok.hub import torch_load_weights

    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=1.0)}, tmp_path / "ns.pt")
    with pytest.raises(ModelLoadError) as e:
        torch_load_weights(tmp_path / "ns.pt", "training state")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'ns.pt'}: refused to load this training state: it contains a pickled "
                          "argparse.Namespace object") and "can run code" in msg
    assert "weights_only" not in msg and "\n" not in msg and "\x1b" not in msg
    obj = torch_load_weights(tmp_path / "ns.pt", "training state", allowed_globals=[argparse.Namespace])
    assert obj["args"].lr == 1.0  # allow-listed explicitly


def test_training_record_and_bad_config(tmp_path):
    import json

    from vfmtok.config import ConfigError
    from vfmtok.hub import read_training_record, write_training_record
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.tokenizer.presets import tokenizer_preset

    assert read_training_record(tmp_path) is None
    write_training_record(tmp_path, {"trained": False, "source": "test"})
    assert read_training_record(tmp_path) == {"trained": False, "source": "test"}
    (tmp_path / "training.json").write_text("{broken")
    assert read_training_record(tmp_path) is None
    model_dir = VFMTokenizer(tokenizer_preset("tok-test")).save_pretrained(tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_bytes(b"\x89PNG\x00\xff")
    with pytest.raises(ConfigError, match=r"m/config\.json: cannot read config: not a text file"):
        VFMTokenizer.from_pretrained(model_dir)
    (model_dir / "config.json").write_text(json.dumps({**config, "image_size": -3}))
    with pytest.raises(ConfigError, match=r"m/config\.json: .*image_size -3"):
        VFMTokenizer.from_pretrained(model_dir)
