"""Train a ScratchGPT language model.

    python train.py configs/tiny.yaml [--key value ...]
    accelerate launch train.py configs/gpt2_small.yaml
    torchrun --standalone --nproc_per_node 2 train.py configs/small.yaml

Keys are the fields of ModelArguments, DataArguments, RunArguments (scratchgpt/training/arguments.py) and
transformers' TrainingArguments; the command line overrides the YAML. Re-running the same command resumes from the
latest complete checkpoint in output_dir.
"""

import logging
import os
import sys

from scratchgpt.errors import one_line, user_error
from scratchgpt.training.run import main as run


def main() -> int:
    is_main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("scratchgpt").setLevel(logging.INFO if is_main_process else logging.WARNING)
    try:
        metrics = run(sys.argv[1:])
    except Exception as error:
        if (cause := user_error(error)) is None:
            raise  # a bug: keep the traceback
        print(f"train.py: error: {one_line(cause)}", file=sys.stderr)
        return 1
    if metrics.get("already_complete"):
        return 0  # said so in the log; nothing was trained or saved
    if is_main_process and "eval_perplexity" in metrics:
        print(f"\nvalidation perplexity {metrics['eval_perplexity']:.2f}, next-token accuracy "
              f"{metrics['eval_accuracy']:.3f}, after {metrics['global_step']} steps")
    for sample in metrics.get("samples", []) if is_main_process else []:
        print(f"\n> {sample['prompt']}\n{sample['reply']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
