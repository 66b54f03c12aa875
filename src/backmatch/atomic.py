"""Atomic file output: a reader sees the old file or the complete new one, never a part.

Each writer fills a temporary file in the target folder and renames it over the
target with :func:`os.replace`, which is atomic on POSIX file systems. A process
killed mid-write leaves at most a ``.tmp`` file, which no reader takes for a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path that replaces ``target`` when the block exits cleanly.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "out.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> (folder / "out.txt").read_text()
        'done'
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    tmp = Path(name)
    # mkstemp creates the file readable by its owner only. The final file gets
    # the permissions a plain open() would give, so other users can read results.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: Path | str, write: Callable[[IO[str]], None]) -> None:
    """Open a temporary text file, let ``write`` fill it, then move it to ``target``."""
    with atomic_path(target) as tmp:
        with tmp.open("w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(target: Path | str, data: Any) -> None:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    write_atomic(target, lambda handle: json.dump(data, handle, indent=2, sort_keys=False, allow_nan=True))
