"""Step → phase → sequences: the timeline a recipe implies, shared by plan and sampler.

Global step s falls in the phase whose step range holds it. Inside phase p, step t covers the
phase's sequences [t·B_p, (t+1)·B_p) with B_p = batch_tokens / seq_len; rank r of W takes the
contiguous slice [r·B_p/W, (r+1)·B_p/W) of them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from curriculum.errors import CurriculumError
from curriculum.recipe import Recipe


class ScheduleError(CurriculumError):
    """A step, rank or world size the schedule cannot serve."""


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
        self.phase_start: list[int] = []
        self.tokens_start: list[int] = []
        step = tokens = 0
        for p in recipe.phases:
            self.phase_start.append(step)
            self.tokens_start.append(tokens)
            step += p.steps
            tokens += p.steps * p.batch_tokens
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
        B = p.batch_sequences
        total_seq = p.steps * B
        first = t * B
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
            tokens_before=self.tokens_start[i] + t * p.batch_tokens,
            tau=taus[seg],
            mask_ratio=p.mask_ratio_at(frac),
            lr_factor=p.lr.factor(t * p.batch_tokens, p.tokens),
        )

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
