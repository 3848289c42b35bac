"""The two kinds of failure the driver reports, each with its exit code.

Messages are one line and say what to do; the CLI prints them as
``qcompile: error: <message>``.
"""
from __future__ import annotations


class QCompileError(Exception):
    """Compiling failed: the model, a pass or an output went wrong (exit 1)."""

    exit_code = 1


class UsageError(QCompileError):
    """The command line or a backend file is wrong (exit 2)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line error reports."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
