"""Shared fixtures for the generator tests: the official GPT fixture (skipped when ``../shared`` is absent)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_gpt():
    """(GPT loaded from the fixture's ``ema`` entry, gpt_io tensors, tolerances)."""
    if not (FIXTURES / "gpt.pt").is_file():
        pytest.skip(f"official fixtures not found at {FIXTURES}")
    from vfmtok.convert.llamagen_gpt import gpt_config_from_official_json
    from vfmtok.generator import GPT

    config = gpt_config_from_official_json(json.loads((FIXTURES / "gpt_config.json").read_text()))
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(FIXTURES / "gpt.pt", map_location="cpu", weights_only=True)
    gpt = GPT(config)
    gpt.load_state_dict(ckpt["ema"], strict=True)
    io = torch.load(FIXTURES / "gpt_io.pt", map_location="cpu", weights_only=True)
    tol = json.loads((FIXTURES / "tolerances.json").read_text())["float_max_abs"]
    return gpt.eval(), io, tol
