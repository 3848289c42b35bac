"""Writing outputs so that a failure never leaves half a file or half a folder."""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar

from qcompiler.errors import UsageError

T = TypeVar("T")


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], T]) -> T:
    """``create`` a fresh name in ``parent``, retrying while the name is taken.

    Unlike tempfile's mkstemp/mkdtemp (mode 0600/0700), ``create`` passes the
    usual modes (0666 for files, 0777 for folders) and the user's umask applies,
    so outputs get the same permissions as any file the user writes.
    """
    for _ in range(100):
        try:
            return create(parent / f"{prefix}{secrets.token_hex(6)}{suffix}")
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


def _open_new_file(path: Path) -> tuple[int, Path]:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path


def _make_new_dir(path: Path) -> Path:
    path.mkdir(0o777)
    return path


def write_atomic(path: Path, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (or what the callable ``data`` writes to the file it is given) to ``path``,
    through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = _create_unique(path.parent, f".{path.name}.", ".tmp", _open_new_file)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    stage = _create_unique(out_dir.parent, f".{out_dir.name}.", ".partial", _make_new_dir)
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
