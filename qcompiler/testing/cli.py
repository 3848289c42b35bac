"""Running ``qcompile`` in-process from a test, and fingerprinting what it must not change."""
from __future__ import annotations

import hashlib
from pathlib import Path

from qcompiler.cli import main


def qcompile(capsys, *args) -> tuple[int, str, str]:
    """``qcompile ARGS`` (each argument str()-ed): its exit code, stdout and stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
