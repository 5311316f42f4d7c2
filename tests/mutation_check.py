"""Deliberate bugs, one at a time: each must make the named tests fail (a test that cannot fail proves nothing).

    .venv/bin/python tests/mutation_check.py            # every mutation; exit status 1 if one goes unnoticed

Each row is (file, exact text, replacement, what it breaks, pytest arguments). The file is restored after each run,
whatever happens. Not part of `make test` (it runs the selected tests once per mutation, a few minutes in all).
"""

import shutil
import subprocess
import sys
import tempfile
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
    ("scratchgpt/data/prepare.py", "backend.encode_special_tokens = True", "backend.encode_special_tokens = False",
     "a literal <|endoftext|> in text becomes the special id", "tests/test_data_prepare.py -k special_token"),
    ("scratchgpt/data/prepare.py", "        labels[~masks] = -100\n", "",
     "assistant-only loss trains every token", "tests/test_data_prepare.py -k assistant_masks_of_a_known"),
    ("scratchgpt/training/run.py", "    training_args.remove_unused_columns = False\n", "",
     "the Trainer drops the assistant masks before the collator",
     "tests/test_finetuning.py -k assistant_only_loss_trains"),
    ("scratchgpt/data/prepare.py", "if len(columns) > 1 and not blocks[1, i].any():", "if False:",
     "blocks without an assistant token are kept (a batch of them has a loss of 0/0)",
     "tests/test_data_prepare.py -k left_out"),
    ("scratchgpt/training/finetuning.py", "    if adapted_head and model.config.tie_word_embeddings:",
     "    if False:", "LoRA on a tied head is accepted", "tests/test_finetuning.py -k tied_head"),
    ("scratchgpt/modeling/modeling_scratchgpt.py",
     "            cache=cache,\n            position_ids=position_ids,\n        )",
     "            cache=cache,\n            position_ids=None,\n        )",
     "packed sequences attend across each other", "tests/test_trl.py -k sft"),
]


def main() -> int:
    missed = 0
    for path, old, new, breaks, tests in MUTATIONS:
        target = REPO / path
        source = target.read_text()
        if source.count(old) != 1:
            print(f"{path}: the text to mutate is not there exactly once; update this table")
            return 2
        with tempfile.NamedTemporaryFile(delete=False) as backup:
            shutil.copy(target, backup.name)
        try:
            target.write_text(source.replace(old, new))
            result = subprocess.run(f"{sys.executable} -m pytest -q -x -p no:cacheprovider {tests}", shell=True,
                                    cwd=REPO, capture_output=True, text=True)
        finally:
            shutil.copy(backup.name, target)
        caught = result.returncode != 0
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}: {breaks} ({path})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
