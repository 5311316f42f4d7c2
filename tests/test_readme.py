"""The README, run as a new user would: every fenced Python and shell block, in order, in a fresh folder.

Each block is preceded by an annotation, ``<!-- readme-test: run -->`` or ``<!-- readme-test: skip: REASON -->``;
``run; skip lines starting with CMD: REASON`` leaves out the lines of one program that cannot run here, and
``run; setup: CODE`` gives a Python block the variables its text assumes (a ``model`` loaded from ``runs/demo``).
What the test changes, and only that: ``python train.py`` runs are shortened (``--max_steps 4`` and friends, after
the README's own options), and the Hub is the local stand-in of ``tests/hub_server.py``. The files the commands
name are the shipped ``examples/`` (or made by an earlier block); a copy-paste line holds no ``[optional]`` parts.
The figures the README quotes must be in BENCHMARKS.md.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .hub_server import HubServer

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
SHORT_RUN = ["--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "2",
             "--max_eval_samples", "8", "--sample_max_new_tokens", "4", "--per_device_train_batch_size", "2",
             "--warmup_steps", "1"]
BLOCK = re.compile(r"<!-- readme-test: (?P<note>.*?) -->\n```(?P<lang>python|bash)\n(?P<body>.*?)```", re.S)


def blocks() -> list[dict]:
    found = []
    for match in BLOCK.finditer(README):
        note = match["note"]
        block = {"lang": match["lang"], "body": match["body"], "run": not note.startswith("skip"), "note": note,
                 "skip_program": None, "setup": ""}
        if skip := re.search(r"skip lines starting with (\S+):", note):
            block["skip_program"] = skip[1]
        if setup := re.search(r"setup: (.*)$", note):
            block["setup"] = setup[1].replace("; ", "\n")
        found.append(block)
    return found


def commands(body: str, skip_program: str | None) -> list[str]:
    """The command lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", "", body)
    lines = []
    for line in joined.splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()  # a trailing comment
        if not line or line.startswith("#") or (skip_program and line.split()[0] == skip_program):
            continue
        if line.startswith("python train.py"):
            line += " " + " ".join(SHORT_RUN)
        lines.append(line)
    return lines


def test_every_fenced_block_is_run_or_says_why_not():
    fences = re.findall(r"^```(python|bash)$", README, re.M)
    annotated = blocks()
    assert len(annotated) == len(fences), "a ```python or ```bash block has no <!-- readme-test: ... --> line"
    for block in annotated:
        assert block["run"] or len(block["note"].split(":", 1)[1].strip()) > 20, block["note"]  # a real reason


def test_copy_paste_lines_hold_no_optional_brackets():
    for block in blocks():
        if block["lang"] == "bash":
            for line in commands(block["body"], None):
                assert not re.search(r"\s\[-", line), line  # `[--json]` fails as written


@pytest.mark.slow  # the README end to end: tokenizers, data, two short training runs, every command (~2 minutes)
def test_the_readme_runs_as_written(tmp_path):
    hub = HubServer().start()
    bin_dir = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", PYTHONPATH=str(REPO), HF_ENDPOINT=hub.url,
               HF_TOKEN="hf_readme_test_token", HF_HOME=str(tmp_path / ".hf"), HF_HUB_DISABLE_TELEMETRY="1")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    (tmp_path / "train.py").symlink_to(REPO / "train.py")
    (tmp_path / "push_to_hub.py").symlink_to(REPO / "push_to_hub.py")
    try:
        for block in blocks():
            if not block["run"]:
                continue
            if block["lang"] == "python":
                script = block["setup"] + "\n" + block["body"]
                result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                                        text=True, timeout=600)
                assert result.returncode == 0, f"{block['body']}\n{result.stderr[-3000:]}"
                continue
            for line in commands(block["body"], block["skip_program"]):
                result = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                                        text=True, timeout=600, stdin=subprocess.DEVNULL)
                assert result.returncode == 0, f"{line}\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
    finally:
        hub.stop()
    assert (tmp_path / "runs" / "demo" / "model.safetensors").is_file() and (tmp_path / "demo.gguf").is_file()
    assert "your-name/scratchgpt-demo" in hub.repos


FIGURE = re.compile(r"\b\d[\d,]*(?:\.\d+)?(?:x| ?%| tok/s| tokens/s| MB/s| TFLOP/s)")


def test_figures_quoted_in_the_readme_are_in_benchmarks():
    benchmarks = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    quoted = set(FIGURE.findall(README))
    missing = sorted(figure for figure in quoted
                     if re.match(r"[\d,.]+", figure)[0] not in benchmarks)
    assert not missing, f"README figures not found in BENCHMARKS.md: {missing}"
