"""The base of every error a user can cause, and the exit code the command line gives it.

Each user-error class (a bad config key, data file, model file, MD or relaxation setting, a
structure the calculator cannot evaluate) subclasses :class:`ForceFieldError`, so the one
command layer (``forcefield.cli``) catches exactly these and prints their message as one
sentence; anything else is a bug and keeps its traceback. They stay ``ValueError``s, so
generic callers can catch them as such.
"""

from __future__ import annotations


class ForceFieldError(ValueError):
    """A failure the user can fix: the message names the key, file or value and the fix.

    ``exit_code`` 2: what was asked cannot run (the usage error of a command line)."""

    exit_code: int = 2


class RunError(ForceFieldError):
    """A run that started as asked and then failed (diverged dynamics, a failed sweep job).

    ``exit_code`` 1, as for any command whose work failed."""

    exit_code: int = 1


class ConfigError(ForceFieldError):
    """A configuration a user wrote that cannot run (unknown key, missing path, bad value)."""


__all__ = ["ConfigError", "ForceFieldError", "RunError"]
