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

    The staging folder sits in the nearest folder that exists on the way to
    ``out_dir`` (the same file system, so renames are atomic), and is made
    at once: an output folder that cannot be written is a usage error before
    any work. A new ``out_dir`` appears in one rename (missing folders above
    it are made just before); into an existing one each file is moved with
    its own atomic rename, leaving unrelated files alone. On failure, an interrupt
    included, the staging folder is removed and ``out_dir`` is untouched. A
    staging folder left by a run that was killed (its owner process gone)
    is removed by the next run into the same place.
    """
    out_dir = Path(out_dir).resolve()
    home = _nearest_existing(out_dir)
    _remove_stale_stages(home, out_dir.name)
    try:
        stage = _create_unique(home, f".{out_dir.name}.", STAGE_SUFFIX, _make_new_dir)
        (stage / OWNER_FILE).write_text(str(os.getpid()))
    except OSError as exc:
        raise UsageError(f"cannot write into {home} ({exc.strerror or exc}); choose an output folder you can "
                         "write to") from None
    try:
        yield stage
        (stage / OWNER_FILE).unlink()
        _move_in(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


STAGE_SUFFIX = ".partial"
OWNER_FILE = ".qcompile-owner"


def _nearest_existing(path: Path) -> Path:
    """The nearest folder on the way to ``path`` that exists (its parent if it exists itself)."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file, so {path} cannot be a folder; give another output folder")
    return folder


def _move_in(stage: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out_dir)
        return
    for item in sorted(stage.iterdir()):
        target = out_dir / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)


def _remove_stale_stages(folder: Path, name: str) -> None:
    """Remove the staging folders for ``name`` whose owner process no longer runs (a run that was killed)."""
    for stage in folder.glob(f".{name}.*{STAGE_SUFFIX}"):
        try:
            owner = int((stage / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being made
        if not _running(owner):
            shutil.rmtree(stage, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
