"""Exceptions the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class CurriculumError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class RecipeError(CurriculumError):
    """A recipe file is missing, malformed or inconsistent. `phase` / `field`, when known, say
    where (an amendment's error then names `changes.<phase>.<field>`)."""

    def __init__(self, message: str, *, phase: str | None = None, field: str | None = None):
        super().__init__(message)
        self.phase, self.field = phase, field


class ManifestError(CurriculumError):
    """A manifest directory is missing files, columns or consistency."""


class MixtureError(CurriculumError):
    """The mixture cannot be computed (e.g. an infeasible epoch cap)."""
