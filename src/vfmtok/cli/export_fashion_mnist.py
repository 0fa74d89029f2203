"""``vfmtok export-fashion-mnist``: write Fashion-MNIST (the demo's data) as an ImageFolder of PNGs.

    vfmtok export-fashion-mnist --out data/fashion-mnist --train-per-class 500 --test-per-class 100
    # -> data/fashion-mnist/train/<k>-<class>/<index>.png and data/fashion-mnist/test/<k>-<class>/<index>.png

The result is an ordinary ImageFolder (``root/<class>/<image>``), the layout every data-reading command takes
(``train-tokenizer data=...``, ``extract-codes --data``, ``eval-tokenizer --data``). It reads the IDX files of Debian's
``dataset-fashion-mnist`` package (or ``--idx-dir``); images stay 28x28 grayscale PNGs (the tokenizers resize and
convert them). A finished export (marked by ``<out>/.complete``) is reused as is.
"""

from __future__ import annotations

import argparse

HELP = "write Fashion-MNIST (the demo's data) as an ImageFolder: OUT/{train,test}/<class>/*.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (receives train/ and test/)")
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="images per class from the training split (default: all 6000)")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="images per class from the test split (default: all 1000; 0 skips the split)")
    parser.add_argument("--idx-dir", default=None,
                        help="folder with the four *-ubyte.gz IDX files (default: Debian's /usr/share/datasets/"
                             "fashion-mnist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class-balanced subset (default 0)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vfmtok.cli.main import UserError
    from vfmtok.data.fashion_mnist import CLASSES, DEBIAN_DIR, export_fashion_mnist

    per_class = {}
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        if n is not None and n < 0:
            raise UserError(f"--{split}-per-class must be >= 0, got {n}")
        if n != 0:
            per_class[split] = 10**9 if n is None else n
    if not per_class:
        raise UserError("nothing to export: both --train-per-class and --test-per-class are 0")
    out = Path(args.out)
    if (out / ".complete").exists():
        print(f"{out} is already a finished export (delete it to export again)")
        return 0
    export_fashion_mnist(out, per_class, root=args.idx_dir or DEBIAN_DIR, seed=args.seed)
    counts = {split: sum(1 for _ in (out / split).rglob("*.png")) for split in per_class}
    print(f"wrote {out}: " + ", ".join(f"{split}/ {n} images" for split, n in counts.items())
          + f" in {len(CLASSES)} class folders each")
    return 0
