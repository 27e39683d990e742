"""`loss-balance`: a feedback policy that amends the mixture toward languages whose loss is high.

Anchored on online data mixing (ADO, as in Mixtera): spend more of the budget where the model is
still learning. Every `every` steps (of reported progress), for the phase that will be running
`lookahead` steps ahead:
- L_i: each language's latest reported MLM loss since the policy last acted (languages without
  a report keep their multiplier);
- L_ref = Σ p_i L_i / Σ p_i over those languages, p_i their current shares: the loss the
  current mixture sees;
- m_i ← m_i · clip(L_i / L_ref, 1 − max_change, 1 + max_change), then clipped to
  [lo · m0_i, hi · m0_i] with m0_i the recipe's own multiplier for the language (1 if none).
Bounds this keeps, by construction: no multiplier moves more than `max_change` per amendment;
τ is never touched (never below the recipe's); since p_i ∝ m_i n_i^τ, every language keeps at
least lo/hi of its recipe share (before epoch caps): 1/4 with the default [0.5, 2].
The proposal is an ordinary amendment (source `policy:loss-balance`) at
max(watermark + lookahead, earliest allowed step): replaying the journal reproduces every byte
without running the policy.

One replica at a time runs it: each holds a lease in the journal (`Journal.hold_policy`),
renewed as progress reports reach it. Replicas started alike (`--policy` on all of them) are
safe: the others stand by, and one takes over `lease_seconds` after the holder stops renewing.
Two policies acting on one run would each move the multipliers, compounding every step.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from curriculum.amend import Amendment, AmendmentConflict, AmendmentError

if TYPE_CHECKING:
    from sampler_server.service import Service

log = logging.getLogger("sampler_server.policy")

NAME = "loss-balance"
MIN_CHANGE = 1e-3  # relative changes below this are not worth an amendment
LEASE_SECONDS = 600.0  # a policy replica that stopped renewing is replaced after this long


def propose_multipliers(loss: dict[str, float], shares: dict[str, float], current: dict[str, float],
                        recipe: dict[str, float], max_change: float, bounds: tuple[float, float]) -> dict[str, float]:
    """New multipliers for the languages with a reported loss (pure; see the module docstring).
    `shares`: current share per language of the phase; `current` / `recipe`: multipliers now and
    in the recipe (missing: 1)."""
    keys = [k for k in loss if k in shares and shares[k] > 0]
    if not keys:
        return {}
    L = np.array([loss[k] for k in keys], np.float64)
    p = np.array([shares[k] for k in keys], np.float64)
    ref = float((p * L).sum() / p.sum())
    if not ref > 0:
        return {}
    lo, hi = bounds
    out = {}
    for k, li in zip(keys, L):
        m = current.get(k, 1.0)
        m0 = recipe.get(k, 1.0)
        step = min(max(li / ref, 1.0 - max_change), 1.0 + max_change)
        new = min(max(m * step, lo * m0), hi * m0)
        new = float(f"{new:.6g}")  # readable journal lines; deterministic either way
        if abs(new - m) > MIN_CHANGE * m:
            out[k] = new
    return out


def _gone(holder: str) -> bool:
    """A lease holder on this host whose process no longer exists (so its lease need not lapse)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class LossBalancePolicy:
    """Acts from `POST /v1/progress` (see `maybe_amend`); one per server process."""

    def __init__(self, every: int, lookahead: int, max_change: float, bounds: tuple[float, float],
                 holder: str | None = None, lease_seconds: float = LEASE_SECONDS):
        lo, hi = bounds
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"policy bounds must satisfy 0 < lo <= 1 <= hi, got {bounds}")
        self.every, self.lookahead, self.max_change, self.bounds = every, lookahead, max_change, (lo, hi)
        self.next_step = every
        self.last_step = -1  # reports after this step feed the next proposal
        self.proposals = 0
        self.refused = 0
        # host:pid:object — two apps in one process (tests) are two replicas too.
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_seconds = float(lease_seconds)
        self.standby_for: dict | None = None  # the lease holder's record while another replica runs the policy
        self._renewed = -math.inf  # time.monotonic() of the last renewal of our lease
        self._lock = threading.Lock()

    def holds_lease(self, journal) -> bool:
        """Whether this replica runs the policy now (renewing its lease at most every quarter
        lease; a replica on standby asks on every report, to take over once the lease lapses)."""
        now = time.monotonic()
        if self.standby_for is None and now - self._renewed < self.lease_seconds / 4:
            return True
        other = journal.hold_policy(self.holder, self.lease_seconds)
        if other is not None and _gone(str(other.get("holder", ""))):  # a replica restarted on this host
            other = journal.hold_policy(self.holder, 0.0)
        if other is None:
            if self.standby_for is not None:
                log.warning("policy: taking over from %s (its lease lapsed)", self.standby_for.get("holder"))
            self._renewed, self.standby_for = now, None
            return True
        if self.standby_for is None:
            log.warning("policy: on standby, %s runs it on this journal (one replica at a time)", other.get("holder"))
        self.standby_for = other
        return False

    def maybe_amend(self, svc: Service, step: int) -> Amendment | None:
        """Propose and admit an amendment when `step` reached the next policy step (and this
        replica holds the policy lease)."""
        if not svc.live.enabled or not self.holds_lease(svc.live.journal):
            return None
        if step < self.next_step:
            return None
        with self._lock:
            if step < self.next_step:
                return None
            self.next_step = step + self.every
            recs = [r for r in svc.progress.records() if r.step > self.last_step]
            self.last_step = step
            loss: dict[str, float] = {}
            for r in recs:
                loss.update(r.loss_by_language)
            if not loss:
                return None
            return self._amend(svc, step, loss)

    def _amend(self, svc: Service, step: int, loss: dict[str, float]) -> Amendment | None:
        s = svc.sampler
        journal = svc.live.journal
        start = max(journal.watermark() + self.lookahead, journal.earliest_step(), step + self.lookahead)
        if start >= s.total_steps:
            return None
        info = s.schedule(start)
        phase = s.recipe.phases[info.phase_index]
        plan = s.plans[info.phase_index]
        shares = dict(zip(plan.table["language"].to_list(), plan.table["weight"].to_list()))
        base = s.base_recipe.phases[info.phase_index].language_weights
        new = propose_multipliers(loss, shares, dict(phase.language_weights), dict(base), self.max_change, self.bounds)
        if not new:
            return None
        hi = max(new, key=lambda k: loss[k])
        amendment = Amendment(
            from_step=start, changes={phase.name: {"language_weights": new}}, source=f"policy:{NAME}",
            reason=(f"loss-balance after step {step}: {len(new)} multiplier(s) moved toward high loss "
                    f"(highest {hi}: loss {loss[hi]:.3f}); bounds ±{self.max_change:.0%}/amendment, "
                    f"[{self.bounds[0]:g}, {self.bounds[1]:g}]x recipe"))
        try:
            stored = svc.live.admit(amendment)
        except AmendmentConflict as exc:
            self.refused += 1
            log.warning("policy amendment at step %d refused: %s", start, exc)
            return None
        except AmendmentError as exc:
            self.refused += 1
            log.error("policy amendment at step %d cannot apply: %s", start, exc)
            return None
        self.proposals += 1
        log.info("policy: amendment from step %d, %d multiplier(s)", start, len(new))
        return stored
