"""The paired comparison behind `marlrec abtest` (end to end: tests/test_train_e2e.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from marlrec.abtest import compare_paired


def test_identical_samples_differ_by_zero_with_certainty() -> None:
    a = np.random.default_rng(0).normal(5.0, 1.0, 200)
    row = compare_paired("return", a, a.copy(), seed=0)
    assert (row.difference, row.low, row.high, row.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert row.needed is None


def test_a_shift_is_found_with_its_interval_p_value_and_sample_size() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(5.0, 1.0, 400)
    b = a + 0.3 + rng.normal(0.0, 1.0, 400)  # paired differences: mean 0.3, sd 1
    row = compare_paired("return", a, b, seed=0)
    assert row.low < 0.3 < row.high and row.low > 0
    assert row.p_value == pytest.approx(stats.ttest_rel(b, a).pvalue) and row.p_value < 1e-4
    d = b - a
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert row.needed == math.ceil((z * d.std(ddof=1) / d.mean()) ** 2)


def test_a_constant_shift_is_certain() -> None:
    a = np.arange(10.0)
    row = compare_paired("clicks", a, a + 1.0, seed=0)
    assert (row.difference, row.low, row.high, row.p_value) == (1.0, 1.0, 1.0, 0.0)
    assert row.needed == 2


def test_the_interval_is_seeded() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert compare_paired("x", a, b, seed=3) == compare_paired("x", a, b, seed=3)
