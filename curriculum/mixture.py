"""Mixture math: language weights p_i ∝ m_i · n_i^τ, budgets, epochs and the epoch cap.

One implementation, used by `curriculum plan`, the sampler and the dashboard.

The epoch cap is UniMax-style water-filling: a language whose allotment would exceed
`max_epochs · n_i` is fixed at that cap and the surplus is spread over the others by the same
rule. Termination: every round either stops or fixes at least one more language at its cap, so
there are at most K rounds. Fixing *all* current violators at once is safe because fixing a
language can only raise the others' allotments (the remaining budget per unit of weight never
falls), so a language over its cap stays over it in every later round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curriculum.errors import MixtureError


def temperature_weights(tokens: np.ndarray, tau: float, multipliers: np.ndarray | None = None) -> np.ndarray:
    """p_i = m_i n_i^τ / Σ_j m_j n_j^τ over languages with n_i > 0 (float64)."""
    n = np.asarray(tokens, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise MixtureError("tokens must be a non-empty 1-D array of available tokens per language")
    if np.any(n <= 0) or not np.all(np.isfinite(n)):
        raise MixtureError("every language in a mixture needs a positive, finite token count")
    if not 0.0 <= tau <= 1.0:
        raise MixtureError(f"tau must be in [0, 1], got {tau}")
    # Work in log space so that n^τ never overflows and tiny τ stays exact.
    logw = tau * np.log(n)
    if multipliers is not None:
        m = np.asarray(multipliers, dtype=np.float64)
        if m.shape != n.shape or np.any(m < 0) or not np.all(np.isfinite(m)):
            raise MixtureError("weight multipliers must be finite, non-negative, one per language")
        if not np.any(m > 0):
            raise MixtureError("every weight multiplier is 0: nothing left to sample")
        with np.errstate(divide="ignore"):
            logw = logw + np.log(m)
    logw = logw - logw.max()
    w = np.exp(logw)
    return w / w.sum()


@dataclass(frozen=True)
class Allocation:
    """How a budget splits over languages."""

    weights: np.ndarray  # effective share of the budget per language (sums to 1)
    allotted: np.ndarray  # tokens per language (sums to the budget)
    epochs: np.ndarray  # allotted / epoch size (the available tokens unless given apart)
    capped: np.ndarray  # bool: held at max_epochs epochs


def allocate(
    tokens: np.ndarray,
    tau: float,
    budget: float,
    max_epochs: float | None = None,
    multipliers: np.ndarray | None = None,
    epoch_tokens: np.ndarray | None = None,
) -> Allocation:
    """Split `budget` tokens over languages by p ∝ m n^τ, water-filling under an epoch cap.

    `epoch_tokens`: the budget's tokens one epoch of each language takes, when that is not its
    token count n (the sampler's streams wrap each document in [CLS] ... [SEP], so a language's
    epoch is n + 2 per document of the budget's stream tokens); epochs and the cap count in it."""
    n = np.asarray(tokens, dtype=np.float64)
    epoch = n if epoch_tokens is None else np.asarray(epoch_tokens, dtype=np.float64)
    if budget <= 0:
        raise MixtureError(f"budget must be positive, got {budget}")
    raw = temperature_weights(n, tau, multipliers)
    if max_epochs is None:
        allotted = raw * budget
        return Allocation(raw, allotted, allotted / epoch, np.zeros(n.shape, dtype=bool))

    cap = max_epochs * epoch
    eligible = raw > 0
    feasible = cap[eligible].sum()
    if budget > feasible * (1 + 1e-12):
        raise MixtureError(
            f"max_epochs={max_epochs} is infeasible: the budget of {budget:.4g} tokens exceeds "
            f"max_epochs x available tokens = {feasible:.4g}; raise max_epochs, add languages "
            f"or lower the phase's tokens"
        )
    allotted = np.zeros_like(n)
    capped = np.zeros(n.shape, dtype=bool)
    free = eligible.copy()
    remaining = float(budget)
    for _ in range(n.size + 1):
        share = raw * free
        total = share.sum()
        if total <= 0:
            break
        trial = remaining * share / total
        over = free & (trial > cap * (1 + 1e-12))
        if not over.any():
            allotted[free] = trial[free]
            break
        allotted[over] = cap[over]
        capped |= over
        free &= ~over
        remaining -= float(cap[over].sum())
    weights = allotted / allotted.sum()
    return Allocation(weights, allotted, allotted / epoch, capped)
