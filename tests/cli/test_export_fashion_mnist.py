"""``vfmtok export-fashion-mnist`` on synthetic IDX files, and the README's Train section naming real commands."""

from __future__ import annotations

import gzip
import re
import shlex
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from vfmtok.cli.main import COMMANDS, main
from vfmtok.data.datasets import ImageFolderDataset
from vfmtok.data.fashion_mnist import CLASSES, FILES
from vfmtok.data.transforms import ImageTransform

REPO = Path(__file__).resolve().parents[2]


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion_mnist(root: Path, per_class: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, n in per_class.items():
        labels = np.repeat(np.arange(len(CLASSES)), n)
        images = rng.integers(0, 256, (len(labels), 28, 28))
        img_name, lbl_name = FILES[split]
        _write_idx(root / img_name, images)
        _write_idx(root / lbl_name, labels)
    return root


def test_export_is_an_image_folder(tmp_path, capsys):
    idx = _fake_fashion_mnist(tmp_path / "idx", {"train": 4, "test": 3})
    out = tmp_path / "fm"
    assert main(["export-fashion-mnist", "--out", str(out), "--idx-dir", str(idx), "--train-per-class", "2",
                 "--test-per-class", "3"]) == 0
    assert "train/ 20 images, test/ 30 images" in capsys.readouterr().out
    ds = ImageFolderDataset(out / "train", ImageTransform(32, crop="resize"))
    assert len(ds) == 20 and ds.classes == [f"{k}-{c}" for k, c in enumerate(CLASSES)]
    assert ds[0].image.shape == (3, 32, 32)
    first = sorted((out / "train" / "0-t-shirt").iterdir())[0]
    assert Image.open(first).size == (28, 28)
    # a finished export is reused; bad counts and missing files are one-line errors
    assert main(["export-fashion-mnist", "--out", str(out), "--idx-dir", str(idx)]) == 0
    assert "already a finished export" in capsys.readouterr().out
    assert main(["export-fashion-mnist", "--out", str(tmp_path / "x"), "--train-per-class", "-1"]) == 2
    assert main(["export-fashion-mnist", "--out", str(tmp_path / "y"), "--idx-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz not found" in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()


def test_readme_train_section_uses_real_commands_and_files():
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Train"):text.index("## Layout")]
    [block] = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.split("  #")[0] for line in block.strip().splitlines()]
    assert lines[0].startswith("vfmtok export-fashion-mnist --out data/fashion-mnist")
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "vfmtok" and argv[1] in COMMANDS, line
        if "--config" in argv:
            assert (REPO / argv[argv.index("--config") + 1]).is_file(), line
        # every data path the later commands read is a split of the exported ImageFolder
        for arg in argv[2:] if argv[1] != "export-fashion-mnist" else []:
            if arg.startswith(("data=", "val_data=", "data/")):
                assert arg.split("=")[-1] in ("data/fashion-mnist/train", "data/fashion-mnist/test"), line
