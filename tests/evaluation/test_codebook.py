from __future__ import annotations

import math

import pytest
import torch

from vfmtok.evaluation.codebook import CodebookUsage


def test_uniform_usage_of_half_the_codebook():
    u = CodebookUsage(8)
    u.update(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    r = u.report()
    assert r.usage == 0.5 and r.used == 4 and r.total == 8 and r.size == 8
    assert r.perplexity == pytest.approx(4.0) and r.entropy_bits == pytest.approx(2.0)


def test_skewed_histogram_and_merge():
    a, b = CodebookUsage(4), CodebookUsage(4)
    a.update(torch.tensor([0, 0, 0]))
    b.update(torch.tensor([1]))
    a.merge(b)
    r = a.report()
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert r.perplexity == pytest.approx(math.exp(h)) and r.usage == 0.5


def test_errors():
    u = CodebookUsage(4)
    with pytest.raises(ValueError, match="no code"):
        u.report()
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        u.update(torch.tensor([4]))
    with pytest.raises(ValueError, match="sizes"):
        u.merge(CodebookUsage(5))
