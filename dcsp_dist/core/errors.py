"""The project's own errors, apart from bugs.

``UserError`` is the base of every error that says what is wrong with what the project was
given or found (bad input or flags, a damaged file, a run directory another job holds, a
model that cannot be had, a run that could not go on): entry points report these, and
``OSError`` (a full disk, a missing file), as one line, on every rank. Anything else is a
bug and keeps its traceback. It is a ``ValueError``, as these errors were before.

Standard library only: every layer, and the data tools, may import it.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input, a damaged file, a refused run: one line, no traceback."""


class TrainingStopped(UserError):
    """A training stage that could not go on (non-finite values past the roll-backs); the
    message names the step and the last good state saved."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message (its type's name when it has none),
    cut to ``limit`` characters. TensorFlow's errors give their ``message`` (without the op's
    context)."""
    message = getattr(exc, "message", None)
    for line in (message if isinstance(message, str) else str(exc)).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
