"""Project-wide pytest fixtures: where the shared official-equivalence fixtures live.

``shared_dir`` is ``<repo>/../shared`` and ``fixtures_dir`` its ``fixtures/official`` folder; tests that need them
skip cleanly when they are absent (e.g. in a fresh clone).
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
