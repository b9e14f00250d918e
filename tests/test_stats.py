import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimtab import stats

floats = st.floats(-1e3, 1e3, allow_nan=False)


@given(st.lists(floats, min_size=1, max_size=40))
def test_median_and_quantile_match_numpy(values):
    assert stats.median(values) == pytest.approx(float(np.median(values)), abs=1e-9)
    assert stats.quantile(values, 0.9) == pytest.approx(float(np.quantile(values, 0.9)), abs=1e-9)


def test_robust_range_ignores_one_outlier():
    centre, sigma = stats.robust_range([1.0, 1.1, 0.9, 1.05, 0.95, 1000.0])
    assert 0.9 < centre < 1.1
    assert sigma < 0.5


def test_upper_range_widens_for_a_right_skewed_sample():
    skewed = [0.01] * 50 + [0.05] * 10
    _, mad_sigma = stats.robust_range(skewed)
    _, tail_sigma = stats.upper_range(skewed)
    assert tail_sigma > mad_sigma


@given(st.lists(floats, min_size=3, max_size=30))
def test_trend_slope_matches_numpy_polyfit(values):
    fit = stats.trend(values)
    slope = np.polyfit(np.arange(len(values)), values, 1)[0]
    assert fit.slope == pytest.approx(slope, rel=1e-6, abs=1e-6)
    assert fit.halfwidth >= 0 and math.isfinite(fit.halfwidth)


def test_trend_band_is_tight_for_a_clean_line_and_wide_for_noise():
    clean = stats.trend([10 - 0.5 * i for i in range(6)])
    assert clean.upper < 0
    noisy = stats.trend([1.0, 1.3, 0.8, 1.2, 0.9, 1.1])
    assert noisy.lower < 0 < noisy.upper


def test_trend_needs_three_values():
    with pytest.raises(ValueError, match="at least 3"):
        stats.trend([1.0, 2.0])
