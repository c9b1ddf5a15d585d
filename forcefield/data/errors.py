"""The one exception type for every data problem a user can cause."""

from __future__ import annotations

from forcefield.errors import ForceFieldError


class DataError(ForceFieldError):
    """A bad data file, key, label or split.

    The message is one sentence that names the file / frame / key and says how to fix it.
    Subclasses ``ValueError`` so generic callers can catch it as such.
    """


def where(source: object | None = None, index: int | None = None) -> str:
    """Human-readable location, e.g. ``"frame 3 of 'train.xyz'"``."""
    if source is None and index is None:
        return "the structure"
    if source is None:
        return f"structure {index}"
    if index is None:
        return f"'{source}'"
    return f"frame {index} of '{source}'"
