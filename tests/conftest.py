import os
from pathlib import Path

import pytest
import torch


# Deterministic and quiet: no Hub access from tests, no progress bars in the output.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# @huggingface/jinja, the chat-template renderer of the Hub and transformers.js (installed by .ci/run)
HF_JINJA = Path(__file__).resolve().parents[1] / ".venv" / "hfjinja" / "node_modules" / "@huggingface" / "jinja"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA device; none is present on this machine")
    import shutil

    if not (_installed("selenium") and shutil.which("chromedriver") and (shutil.which("chromium")
                                                                       or shutil.which("chromium-browser"))):
        skips["browser"] = pytest.mark.skip(reason="needs Chromium, its driver and selenium: apt-get install chromium "
                                                   'chromium-driver; pip install -e ".[dev]"')
    if not _installed("llama_cpp"):
        skips["llamacpp"] = pytest.mark.skip(reason='needs llama-cpp-python: pip install -e ".[gguf-check]" '
                                                    '(compiles llama.cpp, a few minutes; CI installs it)')
    if not _installed("peft"):
        skips["peft"] = pytest.mark.skip(reason='needs peft: pip install -e ".[finetune]"')
    if not (_installed("trl") and _installed("peft")):
        skips["trl"] = pytest.mark.skip(reason='needs trl and peft: pip install -e ".[finetune]"')
    if not (shutil.which("node") and HF_JINJA.is_dir()):
        skips["hfjinja"] = pytest.mark.skip(reason=f"needs node and @huggingface/jinja: npm install --prefix "
                                                   f"{HF_JINJA.parents[2]} @huggingface/jinja@0.5")
    from .testing_utils import TOOL_PYTHONS, TRANSFORMERS_JS

    if not (shutil.which("node") and TRANSFORMERS_JS.is_dir()):
        skips["transformersjs"] = pytest.mark.skip(reason="needs node and transformers.js (npm @huggingface/"
                                                          "transformers): make tool-envs (.ci/run does)")

    for marker, python in TOOL_PYTHONS.items():
        if not python.is_file():
            skips[marker] = pytest.mark.skip(reason=f"needs the virtual environment {python.parents[1].name}: "
                                                    f"make tool-envs (.ci/run builds it)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
                _SKIP_REASONS[skip.kwargs["reason"]] = marker


# --- what the run did not check, and what it changed ---------------------------------------------------------------

_SKIP_REASONS: dict[str, str] = {}  # the reason given for a missing tool (its install line) -> its marker
REPO = Path(__file__).resolve().parents[1]


def _working_tree() -> dict[str, str] | None:
    """Each path ``git status`` lists (changed, new or deleted) with a hash of its content; None outside a git
    checkout. Ignored paths (.venv, runs/, caches) are not listed."""
    import hashlib
    import subprocess

    try:
        listed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "-z"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    state = {}
    for entry in filter(None, listed.stdout.split("\0")):
        path = REPO / entry[3:]
        state[entry[3:]] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else entry[:2]
    return state


def pytest_sessionstart(session):
    session.config._tree_before = _working_tree()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a test wrote into the checkout: tests write under tmp_path, never into the repository."""
    before = getattr(session.config, "_tree_before", None)
    if before is None or hasattr(session.config, "workerinput"):
        return
    after = _working_tree() or {}
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        session.config._tree_changed = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    changed = getattr(config, "_tree_changed", None)
    if changed:
        terminalreporter.section("the tests changed the checkout", red=True)
        for path in changed:
            terminalreporter.line(f"  {path}")
        terminalreporter.line("tests must write under tmp_path only; the run fails")
    skipped: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
        if reason in _SKIP_REASONS:
            skipped[reason] = skipped.get(reason, 0) + 1
    if skipped:
        terminalreporter.section("not checked on this machine (a tool or device is missing)", yellow=True)
        for reason, count in sorted(skipped.items(), key=lambda item: _SKIP_REASONS[item[0]]):
            terminalreporter.line(f"  {_SKIP_REASONS[reason]}: {count} test{'s' if count != 1 else ''} skipped; "
                                  f"{reason}")
