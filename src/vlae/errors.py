"""The one exception type users see.

Every problem caused by the user's input (a missing file, a wrong shape, an
invalid option, an incompatible checkpoint) raises :class:`VLAEError` with a
one-line message naming the culprit. The CLI turns it into ``error: ...`` on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

__all__ = ["VLAEError", "require"]


class VLAEError(ValueError):
    """A user-facing error with a one-line message."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`VLAEError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise VLAEError(message)
