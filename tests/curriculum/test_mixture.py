"""Mixture math: p ∝ m n^τ, budgets, epoch caps (water-filling) and UniMax equivalence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from curriculum.errors import MixtureError
from curriculum.mixture import allocate, temperature_weights

sizes = arrays(np.float64, st.integers(1, 60), elements=st.floats(1.0, 1e12, allow_nan=False, allow_infinity=False))
taus = st.floats(0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(n=sizes, tau=taus)
def test_weights_sum_to_one_and_follow_the_power_law(n, tau):
    w = temperature_weights(n, tau)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(w > 0)
    expected = n**tau / np.sum(n**tau)
    np.testing.assert_allclose(w, expected, rtol=1e-9)


@settings(max_examples=100, deadline=None)
@given(n=sizes)
def test_tau_one_is_proportional_and_tau_zero_uniform(n):
    np.testing.assert_allclose(temperature_weights(n, 1.0), n / n.sum(), rtol=1e-12)
    np.testing.assert_allclose(temperature_weights(n, 0.0), np.full(n.size, 1.0 / n.size), rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(n=sizes, tau=taus)
def test_lower_tau_flattens_the_mixture(n, tau):
    # Lowering τ moves mass from large to small languages: the largest share never grows.
    hi = temperature_weights(n, tau)
    lo = temperature_weights(n, tau * 0.5)
    assert lo.max() <= hi.max() + 1e-12


@settings(max_examples=200, deadline=None)
@given(n=sizes, tau=taus, frac=st.floats(0.01, 0.999), cap=st.floats(0.05, 20.0))
def test_caps_never_exceeded_when_feasible(n, tau, frac, cap):
    budget = frac * cap * n.sum()  # feasible by construction
    a = allocate(n, tau, budget, max_epochs=cap)
    assert a.allotted.sum() == pytest.approx(budget, rel=1e-9)
    assert np.all(a.allotted <= cap * n * (1 + 1e-9))
    assert a.weights.sum() == pytest.approx(1.0, abs=1e-12)
    # Uncapped languages keep the τ rule among themselves.
    free = ~a.capped
    if free.sum() >= 2:
        ref = temperature_weights(n[free], tau)
        np.testing.assert_allclose(a.allotted[free] / a.allotted[free].sum(), ref, rtol=1e-8)
    # A capped language sits exactly at its cap.
    np.testing.assert_allclose(a.allotted[a.capped], cap * n[a.capped], rtol=1e-9)


def unimax(tokens: np.ndarray, budget: float, max_epochs: float) -> np.ndarray:
    """UniMax (Chung et al., 2023) as published, the reference for τ = 0: languages by size
    ascending, the k-th of L gets min(B / (L - k), max_epochs · n_k) of the remaining budget B."""
    n = np.asarray(tokens, dtype=np.float64)
    out = np.zeros_like(n)
    remaining = float(budget)
    for k, i in enumerate(np.argsort(n, kind="stable")):
        out[i] = min(remaining / (n.size - k), max_epochs * n[i])
        remaining -= out[i]
    return out


def test_unimax_by_hand():
    # n = [10, 20, 30], budget 45, one epoch: 45/3 = 15 > 10, so the smallest gets 10; the other
    # two split the remaining 35 evenly (17.5 each, under their caps of 20 and 30).
    np.testing.assert_allclose(unimax(np.array([10.0, 20.0, 30.0]), 45.0, 1.0), [10.0, 17.5, 17.5])
    np.testing.assert_allclose(allocate(np.array([10.0, 20.0, 30.0]), 0.0, 45.0, max_epochs=1.0).allotted,
                               [10.0, 17.5, 17.5])


@settings(max_examples=200, deadline=None)
@given(n=sizes, frac=st.floats(0.01, 0.999), cap=st.floats(0.05, 20.0))
def test_tau_zero_with_cap_equals_unimax(n, frac, cap):
    budget = frac * cap * n.sum()
    ours = allocate(n, 0.0, budget, max_epochs=cap).allotted
    np.testing.assert_allclose(ours, unimax(n, budget, cap), rtol=1e-9, atol=1e-6)


def test_infeasible_cap_is_a_clear_error():
    n = np.array([10.0, 20.0, 30.0])
    with pytest.raises(MixtureError, match="max_epochs=2.*infeasible.*exceeds"):
        allocate(n, 0.5, budget=121.0, max_epochs=2.0)


def test_no_cap_allots_budget_by_weight():
    n = np.array([1e9, 1e6, 1e3])
    a = allocate(n, 0.5, 1e6)
    np.testing.assert_allclose(a.allotted, temperature_weights(n, 0.5) * 1e6)
    np.testing.assert_allclose(a.epochs, a.allotted / n)
    assert not a.capped.any()


def test_multipliers_scale_weights_and_zero_excludes():
    n = np.array([100.0, 100.0, 100.0])
    w = temperature_weights(n, 0.7, np.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(w, [2 / 3, 1 / 3, 0.0])


@pytest.mark.parametrize("bad", [np.array([1.0, 0.0]), np.array([1.0, -3.0]), np.array([]), np.array([np.inf])])
def test_bad_token_counts_are_errors(bad):
    with pytest.raises(MixtureError):
        temperature_weights(bad, 0.5)


def test_two_thousand_languages_are_exact():
    rng = np.random.default_rng(0)
    n = np.exp(rng.uniform(np.log(1e3), np.log(5e11), 2000))
    a = allocate(n, 0.3, 1e11, max_epochs=3.0)
    assert a.allotted.sum() == pytest.approx(1e11, rel=1e-12)
    assert a.capped.any() and np.all(a.allotted <= 3.0 * n * (1 + 1e-12))
