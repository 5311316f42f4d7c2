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
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
