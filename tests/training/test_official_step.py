"""Our tokenizer trainer's step equals the official training step (CVMI-Lab/VFMTok ``vq_train.py`` +
``vfmtok/losses/vq_loss.py``), loss term by loss term and gradient by gradient.

The expected values are ``tests/fixtures/official_train_step.safetensors``, written by the official code itself
(``tests/fixtures/make_official_step.py``; its docstring has the command, the official commit and every stand-in).
Both sides start from the same official-format checkpoints (tokenizer, DINOv2, discriminator heads and its frozen
DINO ViT-S/16, drawn reproducibly from the fixture's init table) and the same batch of two 336x336 images, in float64
on the CPU (the official step was run in float64 too; its values are stored rounded to float32). float64 because
LPIPS-VGG's input gradient jumps at ReLU / max-pool kinks that float32 rounding flips: in float32 the gradients
reached through it agreed only to ~2e-3. The step is run twice: at official step 1 with ``disc_start=2`` (the
discriminator runs, weighted 0) and at step 2 (adversarial terms on). Compared: every loss term, the gradient of
every trainable parameter of the tokenizer and of the discriminator (before clipping), the gradient norm clipping
sees, the codes, and the discriminator's spectral-norm vectors after the step.

Settings that make the step deterministic on both sides: decoder attention dropout 0, LPIPS without its (official,
training-mode) dropout, the discriminator's input policy on its resize branch (``crop_prob=0``); see
docs/training-fidelity.md.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_train_step.safetensors"
GENERATOR = FIXTURE.with_name("make_official_step.py")

pytestmark = pytest.mark.skipif(not FIXTURE.exists(), reason=f"fixture missing: {FIXTURE}")

log = logging.getLogger(__name__)

DTYPE = torch.float64  # both steps run in float64; the fixture stores the official values rounded to float32
LOSS_RTOL = 1e-5  # each loss term, relative
GRAD_RTOL = 1e-5  # each gradient tensor, relative L2 (the float32 rounding of the stored values alone: ~3e-8)
# Floor relative to the norm of all gradients of the model, for gradients that are 0 in exact arithmetic (a conv bias
# followed by a normalisation, an attention key bias): both sides then hold float64 rounding noise.
ATOL_OF_TOTAL = 1e-12
# Gradients reached through LPIPS-VGG's input gradient (reported separately: in float32 these only agreed to ~2e-3,
# since that gradient jumps at ReLU / max-pool kinks that float32 rounding flips; float64 removes the flips)
LPIPS_PATH = ("pixel_decoder.", "token_decoder.", "post_quant_proj.")
SEMANTIC_ONLY = ("token_decoder.mask_dino", "token_decoder.norm_post2.", "token_decoder.proj.")
STEPS = {"before": 0, "after": 1}  # our 0-based step index of the official global steps 1 and 2
LOSS_KEYS = ("loss", "pixel", "lpips", "semantic", "vq", "commit", "entropy", "g_adv")


def _generator_module():
    spec = importlib.util.spec_from_file_location("make_official_step", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # module level: numpy / json only; the official code is imported in main()
    return mod


@pytest.fixture(scope="module")
def official():
    from safetensors import safe_open

    with safe_open(str(FIXTURE), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    return meta, tensors


@pytest.fixture(scope="module")
def lpips_net():
    from vfmtok.losses.lpips import load_lpips

    return load_lpips("vgg").to(DTYPE)


def _recipe(meta):
    from vfmtok.convert.official_vfmtok import config_from_official_json
    from vfmtok.training.tokenizer import OFFICIAL_RECIPE

    a = meta["train_args"]
    return OFFICIAL_RECIPE.replace(
        model=config_from_official_json(meta["tokenizer_config"], meta["dinov2_config"]), precision="fp32",
        batch_size=2, grad_accum=1, disc_type="dino", disc_features="dino-vits16", disc_before_start=True,
        disc_start=a["disc_start"], disc_weight=a["disc_weight"], disc_loss=a["disc_loss"], gen_loss="non-saturating",
        pixel_loss="official_2xmse", lpips_weight=a["perceptual_weight"], pixel_weight=a["reconstruction_weight"],
        codebook_weight=a["codebook_weight"], commit_weight=a["commit_loss_beta"],
        entropy_weight=a["entropy_loss_ratio"], grad_clip=a["max_grad_norm"])


def _build_parts(meta, lpips_net, tmp_path):
    """The official-format checkpoints written to files, read back through our converters."""
    from vfmtok.backbones.dinov2 import DinoV2Backbone
    from vfmtok.backbones.factory import load_official_dinov2
    from vfmtok.convert.official_vfmtok import (
        convert_dino_vits16,
        convert_official_dino_disc,
        convert_official_tokenizer,
        dino_vits16_config,
        load_official_checkpoint,
    )
    from vfmtok.losses.discriminator import DinoDiscConfig, DinoDiscriminator, vit_token_features
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.training.tokenizer import TrainParts, resolved_recipe

    gen = _generator_module()
    specs = meta["specs"]

    def state(group):
        return {k: torch.from_numpy(v) for k, v in gen.synth_state(specs[group]).items()}

    torch.save(state("dinov2"), tmp_path / "dinov2.pth")
    tok_state = state("tokenizer")
    torch.save({"model": tok_state, "ema": tok_state, "steps": 0}, tmp_path / "tokenizer.pt")
    torch.save(state("disc_vit"), tmp_path / "dino_vits16.pth")
    torch.save({"discriminator": state("disc")}, tmp_path / "disc.pt")

    cfg = resolved_recipe(_recipe(meta))
    tok = VFMTokenizer(cfg.model)
    tok.load_pretrained_state_dict(convert_official_tokenizer(
        load_official_checkpoint(tmp_path / "tokenizer.pt"), cfg.model, load_official_dinov2(tmp_path / "dinov2.pth")))
    v = meta["disc_vit"]
    vit = DinoV2Backbone(dino_vits16_config(v["embed_dim"], v["depth"], v["num_heads"]))
    vit.load_pretrained_state_dict(convert_dino_vits16(torch.load(tmp_path / "dino_vits16.pth", weights_only=True)))
    disc = DinoDiscriminator(DinoDiscConfig(feature_dims=(v["embed_dim"],) * (len(v["key_depths"]) + 1),
                                            input_size=v["img_size"], crop_prob=0.0),
                             vit_token_features(vit, tuple(v["key_depths"])))
    disc.load_state_dict(convert_official_dino_disc(
        load_official_checkpoint(tmp_path / "disc.pt", entry="discriminator")), strict=True)
    tok.to(DTYPE)
    vit.to(DTYPE)
    disc.to(DTYPE)
    parts = TrainParts(model=tok, tokenizer=tok, optimizer=None, ema=None, lpips=lpips_net, disc=disc, disc_raw=disc,
                       disc_optimizer=None)
    images = torch.from_numpy(gen.synth_images()).to(DTYPE).div(127.5).sub(1.0)
    return cfg, parts, images


def _rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


def _rel(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-30)


def _group(name: str) -> str:
    return "via LPIPS" if name.startswith(LPIPS_PATH) and not name.startswith(SEMANTIC_ONLY) else "other"


def _compare_grads(phase: str, what: str, ours: dict, official: dict, report: list) -> None:
    """Every official gradient against ours: ``|g - g_off| <= GRAD_RTOL * |g_off| + ATOL_OF_TOTAL * |all g_off|``."""
    assert set(official) == set(ours), (
        f"{phase}: {what} parameter sets differ: official only {sorted(set(official) - set(ours))}, "
        f"ours only {sorted(set(ours) - set(official))}")
    total = float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in official.values()])))
    atol = ATOL_OF_TOTAL * total
    worst: dict[str, tuple[float, str]] = {}
    floor = 0
    for name, g_off in sorted(official.items()):
        g = ours[name]
        assert g is not None, f"{phase}: {what} {name} received no gradient"
        assert g.dtype == DTYPE, f"{phase}: gradient of {what} {name} is {g.dtype}, not {DTYPE}"
        diff = float((g.double() - g_off.double()).norm())
        ref = float(g_off.double().norm())
        assert diff <= GRAD_RTOL * ref + atol, (f"{phase}: gradient of {what} {name}: relative L2 error "
                                                f"{diff / max(ref, 1e-30):.3g} > {GRAD_RTOL} (|g| {ref:.3g})")
        if diff > GRAD_RTOL * ref:
            floor += 1  # passes on the absolute floor only: a gradient that is 0 in exact arithmetic
        elif diff / max(ref, 1e-30) >= worst.get(_group(name), (0.0, ""))[0]:
            worst[_group(name)] = (diff / ref, name)
    report.append(f"{what} grads: {len(official)} tensors, worst rel L2 " + ", ".join(
        f"{g} {e:.2e} ({n})" for g, (e, n) in sorted(worst.items())) + f"; {floor} zero-in-exact-arithmetic "
        f"tensors within {atol:.1e}")


@pytest.mark.parametrize("phase", list(STEPS))
def test_official_training_step(phase, official, lpips_net, tmp_path, one_thread):
    from vfmtok.convert.official_vfmtok import convert_official_dino_disc, rename_official_key
    from vfmtok.training.tokenizer import discriminator_backward, generator_backward

    meta, tensors = official
    want = meta["steps"][phase]
    cfg, parts, x = _build_parts(meta, lpips_net, tmp_path)

    terms, recs, gan_w = generator_backward(parts, cfg, x, None, STEPS[phase])
    assert gan_w == want["disc_weight_applied"]
    tok_grads = {k: p.grad for k, p in parts.tokenizer.named_parameters() if p.requires_grad}
    d_terms = discriminator_backward(parts, cfg, recs, gan_w)
    disc_grads = {k: p.grad for k, p in parts.disc.named_parameters()}

    report = []
    # --- loss terms ---
    losses = {k: float(terms[k]) for k in LOSS_KEYS}
    losses.update(d_loss=float(d_terms["d_loss"]), d_hinge=float(d_terms["d_adv"]))
    off = dict(want["losses"])
    for k, v in losses.items():
        report.append(f"{k} {v:.7g} vs {off[k]:.7g} (rel {_rel(v, off[k]):.1e})")
    for k, v in losses.items():
        if off[k] == 0.0:
            assert v == 0.0, f"{phase}: loss term {k}: ours {v!r}, official exactly 0"
        else:
            assert _rel(v, off[k]) <= LOSS_RTOL, f"{phase}: loss term {k}: ours {v!r} vs official {off[k]!r}"
    # --- the codes ---
    idx = torch.tensor(want["indices"]).reshape(-1)
    assert torch.equal(terms["code_hist"], torch.bincount(idx, minlength=terms["code_hist"].numel())), phase

    # --- every trainable tokenizer parameter ---
    prefix = f"{phase}/grad/tokenizer/"
    official_grads = {rename_official_key(k[len(prefix):]): t for k, t in tensors.items() if k.startswith(prefix)}
    _compare_grads(phase, "tokenizer", tok_grads, official_grads, report)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in tok_grads.values()]))
    assert _rel(float(norm), off["grad_norm"]) <= GRAD_RTOL, f"{phase}: grad norm {float(norm)} vs {off['grad_norm']}"
    report.append(f"grad norm rel {_rel(float(norm), off['grad_norm']):.1e}")
    # --- every discriminator parameter ---
    if phase == "before":  # the official step multiplies the D loss by 0: every gradient is exactly 0
        assert want["disc_grads_all_zero"]
        assert all(g is not None and not g.any() for g in disc_grads.values()), "before: non-zero disc gradient"
    else:
        prefix = f"{phase}/grad/disc/"
        official_d = convert_official_dino_disc(
            {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)})
        _compare_grads(phase, "disc", disc_grads, official_d, report)
    # --- the spectral-norm vectors the step's five discriminator forwards leave behind ---
    prefix = f"{phase}/disc_state/"
    state = convert_official_dino_disc({k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)})
    ours = parts.disc.state_dict()
    sn_err = max(_rel_l2(ours[k], v) for k, v in state.items())
    assert len(state) == 30 and sn_err <= GRAD_RTOL, f"{phase}: spectral-norm vectors differ by {sn_err:.3g}"
    report.append(f"spectral-norm vectors: worst rel L2 {sn_err:.2e}")
    log.info("official step %s: %s", phase, "; ".join(report))
    print(f"[{phase}] " + "; ".join(report))
