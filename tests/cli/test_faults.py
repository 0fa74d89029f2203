"""Faults a user meets, run as a user runs them (``python -m vfmtok ...`` in a subprocess for each kind of fault):
one clear line naming the file, exit code 2 (or a fallback that says so), never a traceback, nothing left behind and
nothing good lost.

Kinds: a truncated ``model.safetensors``; a truncated newest checkpoint (resume falls back); an all-corrupt image
folder; a missing data path; good and bad images mixed in ``reconstruct``; warnings that name the file; the
random-tokenizer and image-size warnings of ``reconstruct`` / ``regions``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.cli.main import main
from vfmtok.hub import write_training_record
from vfmtok.tokenizer.model import VFMTokenizer
from vfmtok.tokenizer.presets import tokenizer_preset
from vfmtok.training.tracker import read_metrics

REPO = Path(__file__).resolve().parents[2]
TOK_YAML = REPO / "configs" / "tokenizer" / "test.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def vfmtok(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m vfmtok ARGS`` as a user runs it (this checkout's sources first on the path)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "vfmtok", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if ": error: " in line]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return VFMTokenizer(tokenizer_preset("tok-test")).save_pretrained(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def damaged_tok(tok_dir, tmp_path_factory) -> Path:
    """The tiny tokenizer with its ``model.safetensors`` cut in half (a partial download or copy)."""
    d = tmp_path_factory.mktemp("tok") / "damaged"
    d.mkdir()
    (d / "config.json").write_bytes((tok_dir / "config.json").read_bytes())
    data = (tok_dir / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return d


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_image_folder) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    good = make_image_folder(root / "good", per_class=4)
    corrupt = root / "corrupt"
    for c in ("a", "b"):
        (corrupt / c).mkdir(parents=True)
        for i in range(5):
            (corrupt / c / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))  # header, then garbage
    mixed = make_image_folder(root / "mixed", per_class=3, seed=1)
    (mixed / "a" / "1.png").write_bytes(b"not an image at all")
    photo = root / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8)).save(photo)
    return {"good": good, "corrupt": corrupt, "mixed": mixed, "photo": photo}


# --------------------------------------------------------------------------------------------- damaged model files
def test_truncated_safetensors_is_one_line_in_every_command(damaged_tok, folders, tmp_path, capsys):
    weights = damaged_tok / "model.safetensors"
    res = vfmtok("reconstruct", folders["photo"], "--tokenizer", damaged_tok, "--out", tmp_path / "rec", cwd=tmp_path)
    assert res.returncode == 2
    [line] = error_lines(res.stderr)
    assert line.startswith(f"vfmtok reconstruct: error: {weights}: truncated or corrupt safetensors file")
    assert not (tmp_path / "rec").exists()
    image = str(folders["good"] / "a" / "0.png")
    for argv in (["regions", image, "--tokenizer", str(damaged_tok), "--out", str(tmp_path / "r.png")],
                 ["extract-codes", "--tokenizer", str(damaged_tok), "--data", str(folders["good"]), "--out",
                  str(tmp_path / "codes"), "--device", "cpu", "--num-workers", "0"],
                 ["eval-tokenizer", "--tokenizer", str(damaged_tok), "--data", str(folders["good"]), "--out",
                  str(tmp_path / "ev" / "r.json"), "--vfm", "none", "--no-lpips"]):
        assert main(argv) == 2, argv[0]
        [line] = error_lines(capsys.readouterr().err)
        assert f"{weights}: truncated or corrupt safetensors file" in line, line
    assert not any((tmp_path / name).exists() for name in ("r.png", "codes", "ev"))  # nothing left behind


# --------------------------------------------------------------------------------------------- checkpoints
def test_resume_falls_back_past_a_truncated_newest_checkpoint(folders, tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--no-progress"]
    assert main(["train-tokenizer", "--config", str(TOK_YAML), f"data={folders['good']}", "device=cpu", *args]) == 0
    state = out / "checkpoints" / "step-00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:300])  # e.g. a copy of the run cut short
    res = vfmtok("train-tokenizer", "total_steps=6", *args, "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not error_lines(res.stderr)
    assert f"checkpoint step-00000004 is damaged, falling back to step-00000002: {state}" in res.stderr
    assert "resuming from" in res.stderr and "6 steps" in res.stdout
    steps = [r["step"] for r in read_metrics(out) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3-4 redone from the intact checkpoint, logged once
    assert VFMTokenizer.from_pretrained(out / "final").config.num_tokens == 16
    # every checkpoint damaged: one line, exit 2, the run directory untouched
    for ckpt in (out / "checkpoints").glob("step-*"):
        (ckpt / "state.pt").write_bytes(b"")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["train-tokenizer", "total_steps=8", *args]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# --------------------------------------------------------------------------------------------- data
def test_all_corrupt_folder_is_one_error_and_leaves_nothing(folders, tok_dir, tmp_path, capsys):
    codes = tmp_path / "codes"
    res = vfmtok("extract-codes", "--tokenizer", tok_dir, "--data", folders["corrupt"], "--out", codes, "--device",
                 "cpu", "--num-workers", "0", cwd=tmp_path)
    assert res.returncode == 2
    [line] = error_lines(res.stderr)
    assert "all 10 images unreadable" in line and str(folders["corrupt"] / "a" / "0.png") in line
    assert not codes.exists()  # no extraction.json left behind
    report = tmp_path / "ev" / "r.json"
    # read in a DataLoader worker: the error comes back wrapped in the worker's traceback, and is still one line
    assert main(["eval-tokenizer", "--tokenizer", str(tok_dir), "--data", str(folders["corrupt"]), "--out",
                 str(report), "--vfm", "none", "--no-lpips", "--workers", "1"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("vfmtok eval-tokenizer: error: all 10 images unreadable, from ") and not report.exists()
    run = tmp_path / "run"
    assert main(["train-tokenizer", "--config", str(TOK_YAML), f"data={folders['corrupt']}", "device=cpu",
                 "--out", str(run), "--no-progress"]) == 2
    assert "unreadable" in capsys.readouterr().err and not run.exists()


def test_missing_data_path_leaves_nothing(tmp_path, capsys):
    res = vfmtok("train-tokenizer", "--config", TOK_YAML, "data=missing", "device=cpu", "--out", "run", cwd=tmp_path)
    assert res.returncode == 2
    assert error_lines(res.stderr) == ["vfmtok train-tokenizer: error: data path not found: missing"]
    assert not (tmp_path / "run").exists()
    # a folder the user made beforehand keeps what it held, and only that
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["train-tokenizer", "--config", str(TOK_YAML), "data=missing", "device=cpu", "--out", str(mine)]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    capsys.readouterr()


def test_damaged_codes_leave_no_gpt_run(tmp_path, capsys):
    from vfmtok.data.tokens import Shard, shard_path, write_manifest, write_shard

    codes = tmp_path / "codes"
    n = 16
    write_shard(shard_path(codes, 0), Shard(np.zeros((n, 1, 16), np.uint16), np.arange(n) % 2, np.arange(n),
                                            np.zeros(0, np.int64)))
    write_manifest(codes, {"num_tokens": 16, "vocab_size": 64, "num_classes": 2, "augmentations": ["center"],
                           "shards": [{"file": "shard-00000.npz", "start": 0, "stop": n, "count": n}]})
    shard = shard_path(codes, 0)
    shard.write_bytes(shard.read_bytes()[:100])
    run = tmp_path / "gpt"
    assert main(["train-gpt", "--config", str(REPO / "configs" / "gpt" / "test.yaml"), "--out", str(run), "--device",
                 "cpu", "--no-progress", f"codes={codes}"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert f"{shard}: truncated or corrupt code shard" in line and not run.exists()


def test_data_warnings_name_the_file(folders, tok_dir, tmp_path):
    bad = folders["mixed"] / "a" / "1.png"
    res = vfmtok("extract-codes", "--tokenizer", tok_dir, "--data", folders["mixed"], "--out", tmp_path / "codes",
                 "--device", "cpu", "--num-workers", "0", cwd=tmp_path)
    assert res.returncode == 0 and not error_lines(res.stderr)
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert any(f"skipping unreadable image {bad}: UnidentifiedImageError" in w for w in warnings), warnings
    assert "BytesIO" not in res.stderr


# --------------------------------------------------------------------------------------------- reconstruct
def test_reconstruct_does_the_readable_images_and_reports_the_others(folders, tok_dir, tmp_path):
    good = folders["good"] / "a" / "0.png"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "rec"
    res = vfmtok("reconstruct", good, bad, tmp_path / "absent.png", folders["photo"], "--tokenizer", tok_dir, "--out",
                 out, cwd=tmp_path)
    assert res.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["0_recon.png", "photo_recon.png"]  # the good ones are done
    assert f"{good}: PSNR" in res.stdout and "mean PSNR over 2 images" in res.stdout
    lines = error_lines(res.stderr)
    assert len(lines) == 2 and str(bad) in lines[0] and "absent.png" in lines[1]
    assert "2 of 4 images unreadable" in res.stderr
    # the tiny test tokenizer has no training record, and the photo is 336 px for a 32-px tokenizer
    assert "has no training record (training.json)" in res.stderr
    assert "photo.jpg (336x336 px, shrunk 10.5x): far from the 32 px this tokenizer works at" in res.stderr


def test_reconstruct_without_a_readable_image(tok_dir, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["reconstruct", str(bad), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "rec")]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"vfmtok reconstruct: error: no readable image: cannot read image {bad}")
    assert not (tmp_path / "rec").exists()


def test_random_and_trained_tokenizer_warnings(folders, tok_dir, tmp_path, caplog):
    import shutil

    tok = shutil.copytree(tok_dir, tmp_path / "tok")
    image = str(folders["good"] / "a" / "0.png")
    write_training_record(tok, {"trained": False, "source": "vfmtok init-tokenizer"})
    assert main(["reconstruct", image, "--tokenizer", str(tok), "--out", str(tmp_path / "r")]) == 0
    assert "randomly initialised tokenizer (vfmtok init-tokenizer)" in caplog.text and "far from" not in caplog.text
    caplog.clear()
    write_training_record(tok, {"trained": True, "source": "vfmtok train-tokenizer", "data": "fashion-mnist/train"})
    assert main(["regions", str(folders["photo"]), "--tokenizer", str(tok), "--out", str(tmp_path / "g.png")]) == 0
    assert "random" not in caplog.text
    assert "shrunk 10.5x): far from the 32 px this tokenizer works at, trained on fashion-mnist/train" in caplog.text


def test_init_tokenizer_and_training_write_a_record(folders, tmp_path):
    from vfmtok.hub import read_training_record

    assert main(["init-tokenizer", "--preset", "tok-test", "--random-backbone", "--out", str(tmp_path / "init")]) == 0
    assert read_training_record(tmp_path / "init")["trained"] is False
    out = tmp_path / "run"
    assert main(["train-tokenizer", "--config", str(TOK_YAML), f"data={folders['good']}", "device=cpu", "total_steps=2",
                 "--out", str(out), "--no-progress"]) == 0
    record = read_training_record(out / "final")
    assert record["trained"] is True and record["steps"] == 2 and record["data"] == str(folders["good"])
    assert record["image_size"] == 32 and "val/psnr" in record["metrics"]
