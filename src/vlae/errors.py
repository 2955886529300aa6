"""The one exception type users see.

Every problem caused by the user's input (a missing file, a wrong shape, an
invalid option, an incompatible checkpoint) raises :class:`VLAEError` with a
one-line message naming the culprit. The CLI turns it into ``error: ...`` on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

__all__ = ["VLAEError", "require", "one_line"]


class VLAEError(ValueError):
    """A user-facing error with a one-line message."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`VLAEError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise VLAEError(message)


def one_line(error: BaseException, *, headline: bool = False) -> str:
    """``error``'s message on one line, to quote inside a one-line message.

    Runs of whitespace, newlines included, become one space, so a library's
    multi-line message cannot break the line; an empty message gives the
    exception's type name instead, so the quote is never blank.

    Args:
        error: the exception to quote.
        headline: keep only the message's first line, where the quote must
            stay short (a row of a table) rather than complete.

    Example:
        >>> one_line(OSError("read failed:\\n  disk gone"))
        'read failed: disk gone'
        >>> one_line(OSError("read failed:\\n  disk gone"), headline=True)
        'read failed:'
        >>> one_line(EOFError())
        'EOFError'
    """
    text = str(error).strip()
    if headline:
        text = text.split("\n", 1)[0]
    return " ".join(text.split()) or type(error).__name__
