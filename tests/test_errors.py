"""samespace/errors.py: one line from any exception, never cut mid-word."""

from __future__ import annotations

import pytest

from samespace.errors import CheckpointError, ConfigError, DataError, OutputError, SameSpaceError, first_line


@pytest.mark.parametrize(
    "message, expected",
    [
        ("", "ValueError"),  # an empty message gives the type, not an IndexError
        ("\n\n", "ValueError"),
        ("first\nsecond", "first"),
        ("\n  indented first\nsecond", "indented first"),
    ],
)
def test_first_line(message, expected):
    assert first_line(ValueError(message)) == expected


def test_long_messages_are_cut_between_words():
    text = " ".join(f"word{i}" for i in range(100))
    cut = first_line(ValueError(text), limit=50)
    assert cut.endswith(" …") and len(cut) <= 52
    assert text.startswith(cut[:-2]) and text[len(cut) - 2] == " "  # ends where a word ends
    token = "x" * 300
    assert first_line(ValueError(f"{token} tail"), limit=50) == f"{token} …"  # one long token stays whole


def test_every_expected_failure_is_a_samespace_error():
    assert all(issubclass(kind, SameSpaceError) for kind in (CheckpointError, ConfigError, DataError, OutputError))


def test_exit_code_prints_one_error_line_for_expected_failures_only(capsys):
    from samespace.errors import DataError, exit_code

    assert exit_code(lambda: None) == 0

    def fails():
        raise DataError("no photos in /x\n(second line never shown)")

    assert exit_code(fails) == 2
    assert capsys.readouterr().err == "error: no photos in /x\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not an expected failure: it stays a traceback
        exit_code(lambda: 1 / 0)
