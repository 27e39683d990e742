"""Exceptions the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class CurriculumError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class RecipeError(CurriculumError):
    """A recipe file is missing, malformed or inconsistent."""


class ManifestError(CurriculumError):
    """A manifest directory is missing files, columns or consistency."""


class MixtureError(CurriculumError):
    """The mixture cannot be computed (e.g. an infeasible epoch cap)."""
