"""Trainer overhead: the full stack (transformers.Trainer with scratchgpt's collator, callbacks and metrics setup,
as train.py builds it) against a bare PyTorch loop over the same model, data, batch and optimizer.

    python bench/trainer.py [--preset small] [--steps 40] [--repeats 3]

Both train on the same memory-mapped prepared dataset (random uint16 blocks, prepared format), with fused AdamW, the
same learning rate and no evaluation; tokens/s counts only the measured steps (the first steps are warm-up), timed
over the same span in both: from the start of the first measured step to the end of the last one.
Each repetition runs both, alternating; medians are reported with the ratio full/bare.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, List, Value
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM  # noqa: E402
from scratchgpt.data.prepare import collate_blocks  # noqa: E402
from scratchgpt.training.callbacks import GracefulStopCallback  # noqa: E402


VOCAB = 8192
WARMUP = 5


class StepTimer(TrainerCallback):
    """Wall time of the steps after the warm-up ones: from the start of step WARMUP + 1 to the end of the last step,
    the span the bare loop times (not the Trainer's end-of-training work after it)."""

    def __init__(self):
        self.start = None
        self.seconds = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == args.max_steps:
            self.seconds = time.perf_counter() - self.start


def model_for(preset: str, seq_len: int) -> ScratchGPTForCausalLM:
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(ScratchGPTConfig.from_preset(preset, vocab_size=VOCAB, n_positions=seq_len,
                                                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def full_stack(dataset, preset, seq_len, batch, steps, output) -> float:
    timer = StepTimer()
    args = TrainingArguments(output_dir=output, per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=10_000,
                             save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model_for(preset, seq_len), args=args, data_collator=collate_blocks,
                      train_dataset=dataset, callbacks=[GracefulStopCallback(), timer])
    trainer.train()
    return batch * seq_len * (steps - WARMUP) / timer.seconds


def bare_loop(dataset, preset, seq_len, batch, steps) -> float:
    model = model_for(preset, seq_len).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate_blocks)
    batches = iter(loader)
    start = None
    for step in range(steps):
        if step == WARMUP:
            start = time.perf_counter()
        inputs = next(batches)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer clips too (max_grad_norm=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return batch * seq_len * (steps - WARMUP) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        n_blocks = args.batch * args.steps * 2
        dataset = Dataset.from_dict(
            {"input_ids": rng.integers(0, VOCAB, (n_blocks, args.seq_len), dtype=np.uint16)},
            features=Features({"input_ids": List(Value("uint16"), length=args.seq_len)}),
        ).with_format("numpy", dtype=np.uint16)
        results = {"full": [], "bare": []}
        for _ in range(args.repeats):
            results["full"].append(full_stack(dataset, args.preset, args.seq_len, args.batch, args.steps, tmp))
            results["bare"].append(bare_loop(dataset, args.preset, args.seq_len, args.batch, args.steps))
    summary = {name: statistics.median(values) for name, values in results.items()}
    summary["ratio_full_over_bare"] = summary["full"] / summary["bare"]
    summary.update(preset=args.preset, seq_len=args.seq_len, batch=args.batch, steps=args.steps, repeats=args.repeats)
    print(json.dumps(summary))
    print(f"{args.preset}, batch {args.batch} x {args.seq_len}: full stack {summary['full']:,.0f} tok/s, bare loop "
          f"{summary['bare']:,.0f} tok/s, ratio {summary['ratio_full_over_bare']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
