"""The project's expected failures: each is a ``SameSpaceError`` whose message is one line."""

from __future__ import annotations

import sys
from typing import Callable


class SameSpaceError(Exception):
    """A failure the user can act on; the command lines print its message as one line."""


class ConfigError(SameSpaceError):
    """A bad experiment config or argument."""


class DataError(SameSpaceError):
    """A problem with the data that the user must fix."""


class CheckpointError(SameSpaceError):
    """A path that is not a usable SameSpace checkpoint."""


class TrainingError(SameSpaceError):
    """Training cannot go on (the loss is no longer finite)."""


class OutputError(SameSpaceError):
    """An output location that must not be written."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none;
    cut at ``limit`` characters on a word boundary, never mid-token."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(text) <= limit:
        return text
    # Cut at the last space before the limit; a first word longer than the limit is kept whole.
    space = text.rfind(" ", 0, limit + 1)
    if space <= 0:
        space = text.find(" ", limit)
    return text if space <= 0 else text[:space] + " …"


def printable(text: str) -> str:
    """``text`` as readable one-line text, safe to print on any console and to put in a report:
    bytes of a non-UTF-8 file name (surrogate escapes from ``os.listdir``, PEP 383) shown as
    ``\\xe9``, control and other unprintable characters as Python escapes (``\\n``, ``\\u200b``)."""
    if text.isprintable():
        return text
    shown = []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # an undecodable byte
            shown.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            shown.append(char)
        else:
            shown.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(shown)


def exit_code(command: Callable[[], object]) -> int:
    """Run a command line's work: 0, or its ``SameSpaceError`` printed as one ``error:`` line and 2."""
    try:
        command()
        return 0
    except SameSpaceError as exc:
        print(f"error: {printable(first_line(exc, limit=1000))}", file=sys.stderr)
        return 2


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files``: counts in messages read right."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
