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


def _missing_tools() -> dict[str, str]:
    """The markers of the tools (or devices) this machine lacks -> the skip reason, with the install line."""
    import shutil

    from .testing_utils import TOOL_PYTHONS, TRANSFORMERS_JS

    missing = {}
    if not torch.cuda.is_available():
        missing["gpu"] = "needs a CUDA device; none is present on this machine"
    if not (_installed("selenium") and shutil.which("chromedriver") and (shutil.which("chromium")
                                                                       or shutil.which("chromium-browser"))):
        missing["browser"] = ("needs Chromium, its driver and selenium: apt-get install chromium chromium-driver; "
                              'pip install -e ".[dev]"')
    if not _installed("llama_cpp"):
        missing["llamacpp"] = ('needs llama-cpp-python: pip install -e ".[gguf-check]" (compiles llama.cpp, a few '
                               'minutes; CI installs it)')
    if not _installed("peft"):
        missing["peft"] = 'needs peft: pip install -e ".[finetune]"'
    if not (_installed("trl") and _installed("peft")):
        missing["trl"] = 'needs trl and peft: pip install -e ".[finetune]"'
    if not (shutil.which("node") and HF_JINJA.is_dir()):
        missing["hfjinja"] = f"needs node and @huggingface/jinja: npm install --prefix {HF_JINJA.parents[2]} " \
                             f"@huggingface/jinja@0.5"
    if not (shutil.which("node") and TRANSFORMERS_JS.is_dir()):
        missing["transformersjs"] = "needs node and transformers.js (npm @huggingface/transformers): make tool-envs " \
                                    "(.ci/run does)"
    for marker, python in TOOL_PYTHONS.items():
        if not python.is_file():
            missing[marker] = f"needs the environment {python.parents[1]}: make tool-envs (.ci/run builds it)"
    return missing


def pytest_collection_modifyitems(config, items):
    skips = {marker: pytest.mark.skip(reason=reason) for marker, reason in _missing_tools().items()}
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


# --- what the run did not check, and what it changed ---------------------------------------------------------------

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
    # from the reasons, not from collection: with pytest-xdist the workers collect, and this runs in the controller
    missing = {reason: marker for marker, reason in _missing_tools().items()}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
        if reason in missing:
            skipped[reason] = skipped.get(reason, 0) + 1
    if skipped:
        terminalreporter.section("not checked on this machine (a tool or device is missing)", yellow=True)
        for reason, count in sorted(skipped.items(), key=lambda item: missing[item[0]]):
            terminalreporter.line(f"  {missing[reason]}: {count} test{'s' if count != 1 else ''} skipped; "
                                  f"{reason}")
