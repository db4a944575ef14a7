"""The one base class of labkit's user-facing errors.

Every error a user can cause by what they typed or asked for (an option out of range, an unknown
name, a missing file) is a ``LabkitError``: its message names the option or field and says what
is allowed. The CLI catches this one class, prints the message as one line and exits 2, instead
of matching error classes by name; a notebook or panel can catch it the same way.
"""

from __future__ import annotations


class LabkitError(ValueError):
    """A user-facing error: its message names the option/field and what is allowed."""
