"""Atomic output folders: build everything in a hidden staging folder, move it into place only when complete.

A run that fails or is interrupted therefore never leaves a folder that looks finished at the destination.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


__all__ = ["staged_output", "refuse_existing"]


def refuse_existing(dst: str | Path) -> None:
    """Raise ``FileExistsError`` if ``dst`` exists and is not an empty folder."""
    target = Path(dst)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{dst}: already exists and is not empty")


@contextmanager
def staged_output(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it becomes ``dst``, on any error it is removed.

    An existing non-empty ``dst`` is refused before anything is written, unless ``overwrite``: then it is replaced
    only once the new content is complete (the old folder stays in place if the run fails).
    """
    if not overwrite:
        refuse_existing(dst)
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any folder made here
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
