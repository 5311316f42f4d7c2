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
    if "eval_perplexity" in metrics:
        start = metrics.get("eval_perplexity_at_start")
        print(f"\nvalidation perplexity {metrics['eval_perplexity']:.2f}" +
              (f" (at the start: {start:.2f})" if start is not None else "") +
              f", next-token accuracy {metrics['eval_accuracy']:.3f}, {evaluated_weights(metrics)}")
    for sample in metrics.get("samples", []):
        if "base_reply" in sample:
            print(f"\n> {sample['prompt']}\nbefore: {sample['base_reply']}\nafter:  {sample['reply']}")
        else:
            print(f"\n> {sample['prompt']}\n{sample['reply']}")
    print(next_steps(metrics["output_dir"]))
    return 0


def evaluated_weights(metrics: dict) -> str:
    """Which weights the final figures (and the saved model) are of."""
    kept = metrics.get("kept_weights") or {"step": metrics["global_step"]}
    if kept["step"] == metrics["global_step"]:
        return f"after {metrics['global_step']} steps"
    return f"of the saved weights, from step {kept['step']} ({kept['reason']})"


def next_steps(output_dir: str) -> str:
    """Where the results are and what to try next, for the end of a run."""
    return f"""
The model, its tokenizer, metrics.json and training_curves.png are in {output_dir}/. Next, in this environment
(after `source .venv/bin/activate` if you used `make`):

  scratchgpt chat {output_dir}
  scratchgpt generate {output_dir} --prompt "Once upon a time" --max-new-tokens 60
  python push_to_hub.py {output_dir} your-name/your-model --dry-run"""


if __name__ == "__main__":
    sys.exit(main())
