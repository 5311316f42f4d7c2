"""Atomic output folders: build everything in a hidden staging folder, move it into place only when complete.

A run that fails or is interrupted therefore never leaves a folder that looks finished at the destination.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import write_failure


__all__ = ["staged_output", "refuse_existing", "usual_permissions"]


def refuse_existing(dst: str | Path) -> None:
    """Raise ``FileExistsError`` if ``dst`` exists and is not an empty folder."""
    target = Path(dst)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{dst}: already exists and is not empty")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def usual_permissions(folder: str | Path) -> None:
    """Give the files in ``folder`` the mode a plain ``open`` would (0644 under umask 022): safetensors writes
    weights through a private temporary file (0600), unreadable by a server running as another user."""
    mode = 0o666 & ~_umask()
    for file in Path(folder).iterdir():
        if file.is_file() and not file.is_symlink():
            file.chmod(mode)


@contextmanager
def staged_output(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it becomes ``dst``, on any error it is removed (a failed
    write is raised as the ``OSError`` it is, naming ``dst`` where the library named no file).

    An existing non-empty ``dst`` is refused before anything is written, unless ``overwrite``: then it is replaced
    only once the new content is complete (the old folder stays in place if the run fails).
    """
    if not overwrite:
        refuse_existing(dst)
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any folder made here
    try:
        yield staging
        usual_permissions(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        failed_write = write_failure(error, filename=dst)
        if failed_write is not None and failed_write is not error:  # a library's own words for a full disk
            raise failed_write from error
        raise
