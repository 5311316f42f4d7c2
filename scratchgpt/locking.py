"""One writer per folder: an exclusive lock held for the whole of a run (``filelock``, an OS lock on a file).

The operating system releases the lock when its process ends, however it ends (SIGKILL, a crash, a machine reset),
so a lock left behind by a dead run never blocks the next one. A second run on a locked folder stops at once with one
line naming the holder (host, PID, start time), read from a small JSON file the holder writes beside the lock.
"""

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


__all__ = ["FolderInUseError", "exclusive_folder", "lock_paths"]


class FolderInUseError(OSError):
    """Another live process holds the folder's lock."""


def lock_paths(folder: str | Path, inside: bool = True) -> tuple[Path, Path]:
    """The lock file and the holder's JSON for ``folder``: inside it, or beside it as ``.<name>.lock`` (for a
    folder that is replaced as a whole when complete, such as prepared data)."""
    folder = Path(folder)
    lock = folder / ".scratchgpt.lock" if inside else folder.parent / f".{folder.name}.lock"
    return lock, lock.with_name(lock.name + ".json")


@contextmanager
def exclusive_folder(folder: str | Path, inside: bool = True, what: str = "run") -> Iterator[None]:
    """Hold ``folder``'s lock until the block ends; raise ``FolderInUseError`` at once if a live process holds it."""
    lock_file, holder_file = lock_paths(folder, inside)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = json.loads(holder_file.read_text(encoding="utf-8"))
            who = f"host {holder['host']}, PID {holder['pid']}, started {holder['started']}"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise FolderInUseError(f"{folder}: in use by another {what} ({who}); wait for it to end, or use another "
                               f"folder") from None
    try:
        holder_file.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}), encoding="utf-8")
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()
