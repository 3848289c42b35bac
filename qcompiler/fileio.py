"""Writing outputs so that a failure never leaves half a file or half a folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qcompiler.errors import UsageError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(out_dir: Path, protected: list[Path]) -> None:
    """Refuse an output folder that is a file or would put ``protected`` files at risk."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a directory")
    for path in protected:
        path = Path(path).resolve()
        if path == out_dir or out_dir in path.parents:
            raise UsageError(
                f"--out {out_dir} holds the input {path.name}; choose a directory that does not contain it"
            )


@contextmanager
def staged_output_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``out_dir``.

    The staging folder sits beside ``out_dir`` (same file system, so renames are
    atomic). A new ``out_dir`` appears in one rename; into an existing one each
    file is moved with its own atomic rename, leaving unrelated files alone.
    On failure the staging folder is removed and ``out_dir`` is untouched.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial"))
    try:
        yield stage
        if not out_dir.exists():
            os.replace(stage, out_dir)
            return
        for item in sorted(stage.iterdir()):
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
