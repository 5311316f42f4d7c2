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
from scratchgpt.training.report import run_summary
from scratchgpt.training.run import main as run


def main() -> int:
    is_main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("scratchgpt").setLevel(logging.INFO if is_main_process else logging.WARNING)
    try:
        metrics = run(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C before training began (training itself stops at a checkpoint)
        print("train.py: interrupted; nothing incomplete was left in place: run the same command to start again",
              file=sys.stderr)
        return 130
    except Exception as error:
        if (cause := user_error(error)) is None:
            raise  # a bug: keep the traceback
        print(f"train.py: error: {one_line(cause)}", file=sys.stderr)
        return 1
    if metrics.get("already_complete") or "stopped" in metrics or not is_main_process:
        return 0  # said so in the log
    print(run_summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
