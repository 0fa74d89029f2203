"""prepare_inference: same outputs up to rounding, backbone weights in bf16, preprocessing constants untouched, the
bf16 region-encoder attentions."""

from __future__ import annotations

import pytest
import torch

from vfmtok.tokenizer import VFMTokenizer, tokenizer_preset
from vfmtok.tokenizer.encoder import EncoderLayer
from vfmtok.tokenizer.inference import prepare_inference

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair() -> tuple[VFMTokenizer, VFMTokenizer]:
    torch.manual_seed(0)
    ref = VFMTokenizer(tokenizer_preset("tok-test")).eval()
    fast = VFMTokenizer(tokenizer_preset("tok-test")).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_channels_last_decoder_is_the_same_function():
    ref, fast = _pair()
    prepare_inference(fast, backbone_dtype=None, compile=False, channels_last=True)
    codes = torch.randint(0, ref.config.codebook_size, (2, ref.config.num_tokens))
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(codes), ref.decode(codes), rtol=1e-4, atol=1e-5)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(fast.encode(images), ref.encode(images))


def test_bf16_backbone_under_autocast():
    ref, fast = _pair()
    prepare_inference(fast, backbone_dtype=torch.bfloat16, compile=False, channels_last=False)
    assert all(p.dtype == torch.bfloat16 for p in fast.backbone.parameters())
    assert all(b.dtype == torch.float32 for b in fast.backbone.buffers() if b.is_floating_point())
    assert all(p.dtype == torch.float32 for p in fast.encoder.parameters())
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = fast.backbone_features(images)
        codes = fast.encode(images)
    with torch.no_grad():
        ref_feats = ref.backbone_features(images)
    for got, want in zip(feats.levels, ref_feats.levels):  # bf16 rounding only
        assert got.float().sub(want).abs().max() <= 0.05 * want.abs().max()
    assert codes.shape == (4, ref.config.num_tokens) and codes.dtype == torch.long
    assert int(codes.max()) < ref.config.codebook_size


def test_gather_deformable_sampling_gives_the_same_codes():
    ref, fast = _pair()
    prepare_inference(fast, backbone_dtype=None, compile=False, channels_last=False, deform_impl="gather")
    assert {m.impl for m in fast.modules() if hasattr(m, "impl")} == {"gather"}
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fast.encode_slots(images), ref.encode_slots(images), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="deform_impl"):
        prepare_inference(fast, compile=False, deform_impl="cuda")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_bf16_encoder_attentions_change_rounding_only():
    """attention_fp32=False under CPU bf16 autocast: slots within a small relative error of the fp32-attention path.

    Measured (5 seeds, sampling layers randomised so the locations depend on the query): 1.2-1.5e-3 against the
    fp32-attention path under the same autocast, 1.4-1.9e-3 against float32 without autocast; bounds ~3x that.
    """
    ref, low = _pair()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in ref.encoder.layers:
            for lin in (layer.cross_attn.sampling_offsets, layer.cross_attn.attention_weights):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
    low.load_state_dict(ref.state_dict())
    prepare_inference(low, backbone_dtype=None, compile=False, channels_last=False, attention_fp32=False)
    layers = [m for m in low.modules() if isinstance(m, EncoderLayer)]
    assert len(layers) == low.config.enc_depth and not any(m.attention_fp32 for m in layers)
    assert all(m.attention_fp32 for m in ref.modules() if isinstance(m, EncoderLayer))
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        feats = ref.backbone_features(images)
        fp32 = ref.encode_features(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            official = ref.encode_features(feats)
            got = low.encode_features(feats)
    assert 0 < _rel(got, official) <= 5e-3
    assert _rel(got, fp32) <= 6e-3
    # and back: the default restores the official fp32 attentions, bit for bit
    prepare_inference(low, backbone_dtype=None, compile=False, channels_last=False)
    assert all(m.attention_fp32 for m in layers)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(low.encode_features(feats), official)
