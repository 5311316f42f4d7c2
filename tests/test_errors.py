"""The rules of ``scratchgpt/errors.py``: a fault the user can act on becomes one line, wherever a library buried it
in its chain of causes and in whatever words it reported a failed write; anything else keeps its traceback."""

import errno

import pytest

from scratchgpt.errors import one_line, user_error, write_failure


class SafetensorError(Exception):
    """Stands in for safetensors' own error type, which is matched by name."""


def chained(error: BaseException, *wrappers: type[BaseException]) -> BaseException:
    """``error`` wrapped in each of ``wrappers`` in turn (``raise Wrapper from error``), as libraries do."""
    for wrapper in wrappers:
        try:
            raise wrapper("a library's own error") from error
        except BaseException as outer:  # noqa: BLE001 - building a chain
            error = outer
    return error


@pytest.mark.parametrize("reported, code", [
    (OSError("4096 requested and 1024 written"), errno.ENOSPC),  # numpy tofile (the GGUF writer)
    (SafetensorError("I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (SafetensorError("I/O error: File too large (os error 27)"), errno.EFBIG),
    (RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0"), errno.EIO),  # torch.save
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), errno.EIO),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
])
def test_a_failed_write_in_any_librarys_words_is_the_oserror_it_is(reported, code):
    for error in (reported, chained(reported, RuntimeError, KeyError)):  # found however deep in the chain
        found = write_failure(error, filename="out/model.safetensors")
        assert isinstance(found, OSError) and found.errno == code and found.filename == "out/model.safetensors"
        line = one_line(found)
        assert line.startswith("out/model.safetensors: ") and "\n" not in line and "nothing incomplete" in line


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch in matmul"), KeyError("x"), SafetensorError("bad")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(error):
    assert write_failure(error) is None and user_error(error) is None


def test_the_users_error_is_the_first_value_or_os_error_in_the_chain():
    cause = ValueError("data.jsonl, line 3: not JSON\n  (details)")
    assert user_error(chained(cause, RuntimeError, TypeError)) is cause
    assert one_line(cause) == "data.jsonl, line 3: not JSON"
    named = OSError(errno.ENOSPC, "No space left on device", "data/train.arrow")
    assert user_error(chained(named, RuntimeError)) is named
    assert one_line(named) == ("data/train.arrow: No space left on device (free some space or write elsewhere; "
                               "nothing incomplete was left in place)")
    assert one_line(ValueError()) == "ValueError"


def test_a_cycle_in_the_chain_ends():
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert write_failure(first) is None and user_error(first) is None
