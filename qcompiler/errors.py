"""The two kinds of failure the driver reports, each with its exit code.

Messages are one line and say what to do; the CLI prints them as
``qcompile: error: <message>``.
"""
from __future__ import annotations

import re


class QCompileError(Exception):
    """Compiling a valid model failed: onnxruntime cannot run it, or a pass failed (exit 1)."""

    exit_code = 1


class UsageError(QCompileError):
    """The invocation is wrong: a flag, a backend file, the model or data files, the output folder (exit 2)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line error reports, without onnxruntime's C++ source
    locations and signatures (what is left is what onnxruntime says went wrong)."""
    text = str(exc).strip() or type(exc).__name__
    return _without_source_location(text.splitlines()[0])


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_LOCATION = re.compile(r"(?:/|\b[A-Z]:\\)\S*?onnxruntime\S*:\d+ ")


def _without_source_location(text: str) -> str:
    """'[ONNXRuntimeError] : 1 : FAIL : Load failed:/onnxruntime_src/a.h:46 void f(int) Opset 30 ...'
    -> 'Load failed: Opset 30 ...'."""
    text = _ORT_PREFIX.sub("", text)
    location = _SOURCE_LOCATION.search(text)
    if location is None:
        return text
    rest = text[location.end():]
    name_end = rest.find("(")
    if name_end > 0 and "::" in rest[:name_end] and " " not in rest[:name_end].split("::")[-1]:
        rest = rest[_closing_paren(rest, name_end) + 1:].removeprefix(" const")
    return f"{text[:location.start()].rstrip()} {rest.strip()}".strip()


def _closing_paren(text: str, start: int) -> int:
    depth = 0
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return len(text) - 1
