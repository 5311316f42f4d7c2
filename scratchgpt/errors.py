"""What the entry points print when a command fails: one line for any fault the user can act on.

Libraries often wrap the error that matters (``datasets`` wraps a reader's ``ValueError`` or a full disk's
``OSError`` in a ``DatasetGenerationError``); ``user_error`` finds it in the chain of causes. Anything else is a bug
and keeps its traceback.
"""

import errno


__all__ = ["user_error", "one_line"]

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere; nothing incomplete was left in place",
    errno.EFBIG: "a file grew past the size this system allows; nothing incomplete was left in place",
    errno.EDQUOT: "the disk quota is used up; nothing incomplete was left in place",
}


def user_error(error: BaseException) -> BaseException | None:
    """The first ``ValueError`` or ``OSError`` in ``error``'s chain of causes (itself included), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (ValueError, OSError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def one_line(error: BaseException) -> str:
    """``error`` as one line; a full disk or a file-size limit says which path and what to do."""
    if isinstance(error, OSError) and error.errno in _HINTS:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error} ({_HINTS[error.errno]})"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
