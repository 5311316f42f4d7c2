"""Deliberate bugs, one at a time: each must make the named tests fail (a test that cannot fail proves nothing).

    make mutation        # or .venv/bin/python tests/mutation_check.py; exit status 1 if one goes unnoticed

Each row is (file, exact text, replacement, what it breaks, pytest arguments). Mutations are applied to copies of
the working tree in a temporary folder (``--jobs`` of them, 2 by default, checked side by side), never to the
checkout itself. Not part of `make test`: `make mutation` runs it (the selected tests once per mutation, a few
minutes in all), and CI runs it after the slow tests.
"""

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MUTATIONS = [
    ("scratchgpt/data/prepare.py", "n_blocks = flat.shape[1] // block_size",
     "n_blocks = (flat.shape[1] - 1) // block_size",
     "an exact multiple of block_size loses its last block", "tests/test_data_prepare.py -k pack_blocks"),
    ("scratchgpt/tokenization/trainers.py",
     "                size += len(text.encode(\"utf-8\"))\n            else:\n                yield text",
     "                size += len(text.encode(\"utf-8\"))\n                yield text\n            else:\n"
     "                yield text",
     "held-out texts are trained on too", "tests/test_tokenization.py tests/test_cli.py -k 'hold_out or bpe_on_files'"),
    ("scratchgpt/generation.py", "ids = ids[:, -(context - max_new_tokens):]",
     "ids = ids[:, :context - max_new_tokens]",
     "a long prompt keeps its start instead of its end", "tests/test_generation.py -k long_prompts"),
    ("scratchgpt/training/checkpoints.py",
     "    missing = [name for name in rng_files if not zipfile.is_zipfile(checkpoint / name)]", "    missing = []",
     "missing or truncated RNG states go unnoticed", "tests/test_training.py -k 'every_file or every_rank'"),
    ("scratchgpt/training/checkpoints.py", 'for name in ("optimizer.pt", "scheduler.pt"):',
     'for name in ("optimizer.pt",):', "a truncated scheduler.pt goes unnoticed",
     "tests/test_training.py -k every_file"),
    ("scratchgpt/data/prepare.py",
     "parts = [tokenizer.backend_tokenizer.to_str(), str(tokenizer.chat_template), str(tokenizer.eos_token_id)]",
     "parts = [tokenizer.backend_tokenizer.to_str(), str(tokenizer.eos_token_id)]",
     "a changed chat template reuses stale data", "tests/test_data_prepare.py -k changes_rebuild"),
    ("scratchgpt/evaluation.py", "step = min(stride, block_size - 1)", "step = stride",
     "a stride equal to the block size leaves tokens unscored", "tests/test_evaluation.py -k context_its_window"),
    ("scratchgpt/data/sources.py", 'and not before[-2].isspace()', "",
     "a long document is cut where its token ids change", "tests/test_data.py -k pieces"),
    ("scratchgpt/data/sources.py", "None if i > 0 or begins is None else (begins, number)",
     "None if begins is None else (begins, number)",
     "a resumed prepare seeks to the start of a line that a separator cut", "tests/test_data.py -k resume_point"),
    ("scratchgpt/data/prepare.py", "backend.encode_special_tokens = True", "backend.encode_special_tokens = False",
     "a literal <|endoftext|> in text becomes the special id", "tests/test_data_prepare.py -k special_token"),
    ("scratchgpt/data/prepare.py", "        labels[~masks] = -100\n", "",
     "assistant-only loss trains every token", "tests/test_data_prepare.py -k assistant_masks_of_a_known"),
    ("scratchgpt/training/run.py", "    training_args.remove_unused_columns = False\n", "",
     "the Trainer drops the assistant masks before the collator",
     "tests/test_finetuning.py -k assistant_only_loss_trains"),
    ("scratchgpt/data/prepare.py", "blocks = blocks[:, blocks[1].any(axis=1)]", "pass",
     "blocks without an assistant token are kept (a batch of them has a loss of 0/0)",
     "tests/test_data_prepare.py -k left_out"),
    ("scratchgpt/training/finetuning.py", "    if adapted_head and model.config.tie_word_embeddings:",
     "    if False:", "LoRA on a tied head is accepted", "tests/test_finetuning.py -k tied_head"),
    ("scratchgpt/modeling/modeling_scratchgpt.py",
     "            position_ids=position_ids,\n            **{CACHE_NAME: cache},\n        )",
     "            position_ids=None,\n            **{CACHE_NAME: cache},\n        )",
     "packed sequences attend across each other", "tests/test_trl.py -k sft"),
    # the newer modules, each against the test that states its rule
    ("scratchgpt/training/finetuning.py", '"lora_dropout": model_args.lora_dropout,', '"lora_dropout": 0.0,',
     "the run's lora_dropout is not the adapter's", "tests/test_finetuning.py -k runs_lora_settings"),
    ("scratchgpt/demo.py", "int(seed) != seed or seed < 0:", "int(seed) != seed or seed <= 0:",
     "the page's default seed 0 is refused", "tests/test_demo.py -k default_settings"),
    ("scratchgpt/demo.py", "messages = _checked_history(history) + [", "messages = [",
     "the chat history is dropped before generation", "tests/test_demo.py -k history_is_part"),
    ("scratchgpt/training/run.py", 'key=lambda f: (f.suffix == ".safetensors" or f.name.endswith(".index.json"),',
     "key=lambda f: (False,", "the final weights are not the last file renamed into place",
     "tests/test_faults.py -k renamed_into_place"),
    ("scratchgpt/loading.py", '    folder = Path(folder)\n    if not (folder / "config.json").is_file():',
     "    folder = Path(folder)\n    if False:", "a model folder without config.json passes the folder check",
     "tests/test_loading.py -k without_config"),
    # the template travels in tokenizer_config.json and chat_template.jinja (tokenization.portable): both must go
    ("scratchgpt/hub.py", '"tokenizer_config.json", "special_tokens_map.json",\n    "chat_template.jinja", "vocab.json"',
     '"special_tokens_map.json",\n    "vocab.json"', "a pushed chat model loses its chat template",
     "tests/test_hub.py -k push_then_load"),
    ("scratchgpt/generation.py", "top_k is not None and top_k < 0,", "top_k is not None and top_k <= 0,",
     "top_k 0 (no top-k filter) is refused", "tests/test_generation.py -k top_k"),
    ("scratchgpt/generation.py", "for k, v in sampling.items() if v is not None}", "for k, v in sampling.items() if v}",
     "top_k 0 falls back to the generation config's top_k 50", "tests/test_generation.py -k top_k"),
    ("scratchgpt/data/prepare.py", "if len(ids) < MIN_DOCUMENTS_TO_SPLIT", "if len(ids) <= MIN_DOCUMENTS_TO_SPLIT",
     "a corpus of exactly MIN_DOCUMENTS_TO_SPLIT documents is split by its tail",
     "tests/test_data_prepare.py -k 'split_by_document or enough'"),
    ("scratchgpt/tokenization/trainers.py", "    min_frequency: int = 2,", "    min_frequency: int = 1,",
     "BPE learns merges seen once by default", "tests/test_tokenization.py -k two_occurrences"),
    ("scratchgpt/tokenization/trainers.py", "min_frequency=min_frequency or 2,", "min_frequency=min_frequency or 1,",
     "the CLI's BPE learns merges seen once by default", "tests/test_tokenization.py -k two_occurrences"),
    ("scratchgpt/training/checkpoints.py",
     'weights = "adapter_model.safetensors" if (checkpoint / "adapter_config.json").is_file() else "model.safetensors"',
     'weights = "model.safetensors"', "a LoRA checkpoint is not recognised (the run restarts from step 0)",
     "tests/test_training.py -k newest_complete"),
    ("scratchgpt/locking.py", "        lock.acquire(timeout=0)\n", "        lock.acquire(timeout=0)\n        lock.release()\n",
     "the folder lock is released right after it is taken", "tests/test_faults.py -k held_until"),
    ("scratchgpt/modeling/gguf_export.py", 'if array.ndim == 1 or dtype == "f32":', 'if dtype == "f32":',
     "GGUF norms and biases written in half precision", "tests/test_gguf.py -k type_its_dtype"),
    ("scratchgpt/staging.py", "        shutil.rmtree(staging, ignore_errors=True)\n        failed_write", "        failed_write",
     "a failed staged output leaves its staging folder behind", "tests/test_staging.py"),
    ("scratchgpt/errors.py", 'and (code := re.search(r"os error (\\d+)", str(error))):',
     'and (code := re.search(r"error (\\d+)", "error 5")):', "safetensors' full disk is reported as an I/O error",
     "tests/test_errors.py"),
    ("scratchgpt/training/finetuning.py", "replay = replay.select(np.resize(order, n_replay))",
     "replay = replay.select(np.random.default_rng(seed).integers(0, len(replay), n_replay))",
     "replay blocks drawn with replacement (some many times, some never)",
     "tests/test_finetuning.py -k spreads_over"),
    ("scratchgpt/tokenization/portable.py", '        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS\n', "",
     "saved tokenizers name TokenizersBackend, which transformers 4.x cannot load",
     "tests/test_tokenization.py -k not_importable"),
    ("scratchgpt/tokenization/portable.py", '        config["chat_template"] = template_path.read_text(encoding="utf-8")\n',
     "        pass\n", "the chat template only in chat_template.jinja", "tests/test_tokenization.py -k not_importable"),
    ("scratchgpt/modeling/onnx_export.py", "tuple({0: batch_size, 2: past} for _ in past_names))",
     "tuple({0: batch_size} for _ in past_names))",
     "an ONNX graph whose past has a fixed length (transformers.js' first step feeds none)", "tests/test_onnx.py"),
    ("scratchgpt/modeling/onnx_export.py", 'config["transformers.js_config"] = {"dtype": "fp32"}', "pass",
     "browsers would ask transformers.js for an 8-bit file the folder does not have", "tests/test_onnx.py"),
    ("scratchgpt/data/sources.py", "                if self._in_frame and not self._frame.eof:\n",
     "                if False:\n", "a cut-short .zst file read as if whole", "tests/test_data.py -k damaged"),
    ("scratchgpt/data/sources.py", "return kind is not None and (compression is not None or kind not in _NOT_IN_FOLDERS)",
     "return kind is not None", "a folder's tokenizer.json read as a corpus", "tests/test_data.py -k folders_leave"),
    ("scratchgpt/data/hub_datasets.py", "dataset = replace(self, revision=sha)", "dataset = self",
     "a Hub dataset read at its moving branch, not at the commit recorded",
     "tests/test_data_hub_datasets.py -k at_its_commit"),
]


def checkout_copy(folder: Path) -> Path:
    """A copy of the working tree (tracked and untracked files, not the ignored ones) with the same .venv, so a
    mutation in it is seen by that copy's tests only."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode:  # not a git checkout: everything but the environment and run outputs
        shutil.copytree(REPO, folder, ignore=shutil.ignore_patterns(".venv", "runs", "__pycache__", ".pytest_cache"))
    else:
        for name in filter(None, listed.stdout.split("\0")):
            if (REPO / name).is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, folder / name)
    (folder / ".venv").symlink_to(REPO / ".venv")
    return folder


def check(copy: Path, mutation: tuple) -> bool:
    """Apply one mutation to the copy, run its tests there, undo it; True when the tests fail."""
    path, old, new, _, tests = mutation
    target = copy / path
    source = target.read_text()
    try:
        target.write_text(source.replace(old, new))
        # the copy's package first: the editable install's finder comes after PYTHONPATH
        env = {**os.environ, "PYTHONPATH": str(copy)}
        result = subprocess.run(f"{sys.executable} -m pytest -q -x -p no:cacheprovider {tests}", shell=True,
                                cwd=copy, env=env, capture_output=True, text=True)
    finally:
        target.write_text(source)
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutations checked at once, each in its own copy")
    args = parser.parse_args()
    for path, old, *_ in MUTATIONS:
        if (REPO / path).read_text().count(old) != 1:
            print(f"{path}: the text to mutate is not there exactly once; update this table")
            return 2
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copies = queue.Queue()
        for i in range(max(1, args.jobs)):
            copies.put(checkout_copy(Path(tmp) / str(i)))

        def in_a_free_copy(mutation):
            copy = copies.get()
            try:
                return check(copy, mutation)
            finally:
                copies.put(copy)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            caught = list(pool.map(in_a_free_copy, MUTATIONS))  # in table order
    for (path, _, _, breaks, _), was_caught in zip(MUTATIONS, caught):
        print(f"{'caught' if was_caught else 'MISSED'}: {breaks} ({path})")
    return 0 if all(caught) else 1


if __name__ == "__main__":
    sys.exit(main())
