"""Project-wide pytest fixtures: where the shared official-equivalence fixtures live.

``shared_dir`` is ``<repo>/../shared`` and ``fixtures_dir`` its ``fixtures/official`` folder; tests that need them
skip cleanly when they are absent (e.g. in a fresh clone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared`` (skips the test when the folder is absent)."""
    path = (REPO_ROOT / ".." / "shared").resolve()
    if not path.is_dir():
        pytest.skip(f"shared folder not found: {path}")
    return path


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """``<shared>/fixtures/official``: official-equivalence fixtures (skips the test when absent)."""
    path = shared_dir / "fixtures" / "official"
    if not path.is_dir():
        pytest.skip(f"official fixtures not found: {path}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: faster, and immune to oversubscription on a shared
    2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def make_image_folder() -> Callable[..., Path]:
    """``make(root, classes, per_class, size=(h, w), seed)``: an ImageFolder of random RGB PNGs ``root/<class>/<i>.png``."""

    def make(root: Path, classes: Sequence[str] = ("a", "b"), per_class: int = 3, size: tuple[int, int] = (32, 32),
             seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        for c in classes:
            (root / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
        return root

    return make
