"""Step → phase → sequences: the timeline a recipe implies, shared by plan and sampler.

Global step s falls in the phase whose step range holds it. Inside a phase, step t covers the
phase's sequences [first(t), first(t) + B_t); rank r of W takes the contiguous slice
[first + r·B_t/W, first + (r+1)·B_t/W). B_t is the full batch (batch_tokens / seq_len) except
during a batch warm-up, where it grows linearly in tokens:
    B_t = clamp(m · floor((B_min + (B - B_min) · T_t / W_tok) / m), B_min, B)
with T_t the phase tokens before step t, W_tok the warm-up tokens and m the rounding multiple.
Warm-up steps last while T_t < W_tok, so the warm-up ends within one batch of W_tok tokens; the
rest of the budget is served in full batches (⌈remaining / batch_tokens⌉ steps).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from curriculum.errors import CurriculumError
from curriculum.recipe import Phase, Recipe


class ScheduleError(CurriculumError):
    """A step, rank or world size the schedule cannot serve."""


@dataclass(frozen=True)
class PhaseLayout:
    """Steps and sequences of one phase."""

    batch: int  # full global batch (sequences)
    warm_first: np.ndarray  # int64[warm_steps + 1]: first sequence of each warm-up step, then the end
    steps: int
    total_sequences: int

    @property
    def warm_steps(self) -> int:
        return self.warm_first.size - 1

    def first_sequence(self, t: int) -> int:
        if t < self.warm_steps:
            return int(self.warm_first[t])
        return int(self.warm_first[-1]) + (t - self.warm_steps) * self.batch

    def batch_at(self, t: int) -> int:
        if t < self.warm_steps:
            return int(self.warm_first[t + 1] - self.warm_first[t])
        return self.batch


@lru_cache(maxsize=256)
def _layout(tokens: float, batch: int, seq_len: int, w_tokens: float, w_min: int, w_mult: int) -> PhaseLayout:
    firsts = [0]
    if w_tokens > 0:
        # O(warm-up steps) once per phase; mmBERT's 60B-token ramp is ~66k steps.
        done = 0
        while done * seq_len < w_tokens:
            raw = w_min + (batch - w_min) * (done * seq_len) / w_tokens
            b = min(batch, max(w_min, w_mult * math.floor(raw / w_mult)))
            done += b
            firsts.append(done)
    warm = np.asarray(firsts, dtype=np.int64)
    rest_tokens = max(0.0, tokens - int(warm[-1]) * seq_len)
    rest_steps = math.ceil(rest_tokens / (batch * seq_len))
    steps = max(1, warm.size - 1 + rest_steps)
    total = int(warm[-1]) + (steps - (warm.size - 1)) * batch
    return PhaseLayout(batch=batch, warm_first=warm, steps=steps, total_sequences=total)


def phase_layout(phase: Phase) -> PhaseLayout:
    w = phase.batch_warmup
    return _layout(
        float(phase.tokens), phase.batch_sequences, phase.seq_len,
        float(w.tokens) if w else 0.0, w.min_sequences if w else 0, w.step_multiple if w else 1,
    )


@dataclass(frozen=True)
class StepInfo:
    step: int
    phase_index: int
    phase: str
    step_in_phase: int
    phase_steps: int
    seq_len: int
    global_batch: int  # sequences in the global batch at this step
    first_sequence: int  # index in the phase of the step's first sequence
    phase_sequences: int  # sequences in the whole phase
    tokens_before: int  # tokens served by all earlier steps (all phases)
    tau: float
    mask_ratio: float  # at the step's first sequence (annealed ratios vary per sequence)
    lr_factor: float

    @property
    def fraction(self) -> float:
        """How far into its phase the step starts (0..1)."""
        return self.first_sequence / self.phase_sequences

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Timeline:
    """Phase step ranges of a recipe."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.layouts = [phase_layout(p) for p in recipe.phases]
        self.phase_start: list[int] = []
        self.tokens_start: list[int] = []
        step = tokens = 0
        for p, lay in zip(recipe.phases, self.layouts):
            self.phase_start.append(step)
            self.tokens_start.append(tokens)
            step += lay.steps
            tokens += lay.total_sequences * p.seq_len
        self.total_steps = step
        self.total_tokens = tokens

    def phase_of(self, step: int) -> int:
        if step < 0:
            raise ScheduleError(f"step must be >= 0, got {step}")
        if step >= self.total_steps:
            raise ScheduleError(
                f"step {step} is past the last phase: the recipe {self.recipe.name!r} has {self.total_steps} steps (0..{self.total_steps - 1})"
            )
        return bisect.bisect_right(self.phase_start, step) - 1

    def locate(self, step: int) -> StepInfo:
        i = self.phase_of(step)
        p = self.recipe.phases[i]
        t = step - self.phase_start[i]
        lay = self.layouts[i]
        B = lay.batch_at(t)
        total_seq = lay.total_sequences
        first = lay.first_sequence(t)
        frac = first / total_seq
        taus = p.segment_taus()
        seg = min(len(taus) - 1, first * len(taus) // total_seq)
        return StepInfo(
            step=step,
            phase_index=i,
            phase=p.name,
            step_in_phase=t,
            phase_steps=p.steps,
            seq_len=p.seq_len,
            global_batch=B,
            first_sequence=first,
            phase_sequences=total_seq,
            tokens_before=self.tokens_start[i] + first * p.seq_len,
            tau=taus[seg],
            mask_ratio=p.mask_ratio_at(frac),
            lr_factor=p.lr.factor(first * p.seq_len, p.tokens),
        )

    def first_unsplittable(self, start: int, stop: int, world_size: int) -> int | None:
        """The first step in [start, stop) whose global batch `world_size` does not divide, or
        None: a stream can refuse such a range up front, not cut it partway (warm-up steps vary)."""
        for i, lay in enumerate(self.layouts):
            p0 = self.phase_start[i]
            lo, hi = max(start, p0) - p0, min(stop, p0 + lay.steps) - p0
            if lo >= hi:
                continue
            w = lay.warm_steps
            if lo < w:  # warm-up steps of the range: their sizes, vectorized
                sizes = np.diff(lay.warm_first[lo : min(hi, w) + 1])
                bad = np.flatnonzero(sizes % world_size)
                if bad.size:
                    return p0 + lo + int(bad[0])
            if hi > w and lay.batch % world_size:
                return p0 + max(lo, w)
        return None

    def rank_slice(self, info: StepInfo, rank: int, world_size: int) -> tuple[int, int]:
        """Phase sequence range [start, stop) of `rank` of `world_size` at this step."""
        if world_size < 1:
            raise ScheduleError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ScheduleError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if info.global_batch % world_size:
            raise ScheduleError(
                f"world_size {world_size} does not divide the global batch of {info.global_batch} sequences "
                f"at step {info.step} (phase {info.phase!r}); use a divisor of {info.global_batch}"
            )
        per = info.global_batch // world_size
        start = info.first_sequence + rank * per
        return start, start + per
