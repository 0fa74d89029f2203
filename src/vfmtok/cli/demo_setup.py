"""``make demo`` set-up step: make sure the demo's default data (Debian's Fashion-MNIST) is on the machine.

Installs ``dataset-fashion-mnist`` with apt when it is missing and we are root, saying so (and why) before apt runs;
otherwise says exactly what to install or which ``--data`` folder to pass. Exit code 0 when the data is there (or
``--data`` makes it unnecessary), 2 if not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ..data.fashion_mnist import DEBIAN_DIR, FILES

PACKAGE = "dataset-fashion-mnist"


def have_data() -> bool:
    return all((DEBIAN_DIR / f).exists() for pair in FILES.values() for f in pair)


def ensure_fashion_mnist() -> bool:
    if have_data():
        return True
    apt = shutil.which("apt-get")
    if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        print(f"make demo: the demo's default data (Fashion-MNIST) is not in {DEBIAN_DIR}.\n"
              f"make demo: running as root, so installing the Debian package {PACKAGE} (about 30 MB) with "
              f"`apt-get install {PACKAGE}` now.\n"
              "make demo: to skip this, stop here (Ctrl-C) and run `vfmtok demo --data PATH --out DIR` on your own "
              "ImageFolder instead.", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        res = subprocess.run([apt, "install", "-y", "-qq", PACKAGE], env=env, check=False)
        if res.returncode != 0:  # the package lists may be missing on a fresh machine
            print("make demo: apt-get could not find it; refreshing the package lists (`apt-get update`) and "
                  "trying again", file=sys.stderr, flush=True)
            subprocess.run([apt, "update", "-qq"], env=env, check=False)
            subprocess.run([apt, "install", "-y", "-qq", PACKAGE], env=env, check=False)
    return have_data()


def main() -> int:
    if ensure_fashion_mnist():
        return 0
    print(
        f"The demo's default data is missing: {DEBIAN_DIR}. Install it with `sudo apt-get install {PACKAGE}`, "
        "or run `vfmtok demo --data PATH --out DIR` with any ImageFolder directory (PATH/train/<class>/*.png, "
        "optionally PATH/test/<class>/*.png).",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
