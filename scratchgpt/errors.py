"""What the entry points print when a command fails: one line for any fault the user can act on.

Libraries often wrap the error that matters (``datasets`` wraps a reader's ``ValueError`` or a full disk's
``OSError`` in a ``DatasetGenerationError``); ``user_error`` finds it in the chain of causes. Some report a failed
write in their own words instead of an ``OSError``: ``torch.save`` raises ``RuntimeError`` ("PytorchStreamWriter
failed ..."), safetensors ``SafetensorError`` ("I/O error: No space left on device (os error 28)"), numpy's
``tofile`` (the GGUF writer) "N requested and M written"; ``write_failure`` turns each into the ``OSError`` it is.
Anything else is a bug and keeps its traceback.
"""

import errno
import os
import re


__all__ = ["user_error", "one_line", "write_failure"]

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere; nothing incomplete was left in place",
    errno.EFBIG: "a file grew past the size this system allows; nothing incomplete was left in place",
    errno.EDQUOT: "the disk quota is used up; nothing incomplete was left in place",
    errno.EIO: "nothing incomplete was left in place",
}


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen and len(seen) < 16:
        yield error
        seen.add(id(error))
        error = error.__cause__ or error.__context__


_TORCH_WRITE_MARKS = ("PytorchStreamWriter failed", "iostream error", "unexpected pos", "inline_container")


def _failed_write(error: BaseException) -> OSError | None:
    """``error`` as the ``OSError`` of a failed write, if it is one (in any library's words)."""
    if isinstance(error, OSError) and re.fullmatch(r"\d+ requested and \d+ written", str(error)):
        return OSError(errno.ENOSPC, "a write was cut short; the disk may be full")
    if isinstance(error, OSError) and error.errno is not None:
        return error
    if type(error).__name__ == "SafetensorError" and (code := re.search(r"os error (\d+)", str(error))):
        return OSError(int(code[1]), os.strerror(int(code[1])))
    if isinstance(error, RuntimeError) and any(mark in str(error) for mark in _TORCH_WRITE_MARKS):
        return OSError(errno.EIO, f"the write failed ({str(error).splitlines()[0]}); the disk may be full")
    return None


def write_failure(error: BaseException, filename: str | os.PathLike | None = None) -> OSError | None:
    """The ``OSError`` behind a failed write anywhere in ``error``'s chain (see the module docstring), with
    ``filename`` filled in where the library did not say which file; None if the chain holds no failed write."""
    for cause in _chain(error):
        if (found := _failed_write(cause)) is not None:
            if found.filename is None and filename is not None:
                found = OSError(found.errno, found.strerror, str(filename))
            return found
    return None


def user_error(error: BaseException) -> BaseException | None:
    """The first ``ValueError`` or ``OSError`` in ``error``'s chain of causes (itself included), or the failed write
    it reports in a library's own words (``write_failure``); None for anything else (a bug)."""
    for cause in _chain(error):
        if isinstance(cause, ValueError):
            return cause
        if isinstance(cause, OSError):
            return _failed_write(cause) or cause
    return write_failure(error)


def one_line(error: BaseException) -> str:
    """``error`` as one line; a full disk or a file-size limit says which path and what to do."""
    if isinstance(error, OSError) and error.errno in _HINTS:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error} ({_HINTS[error.errno]})"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
