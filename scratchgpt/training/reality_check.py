"""The runtime reality check: before a long run goes far, what it will cost on this machine. A few optimizer steps
are timed (after the first, which pays for allocation and, with ``torch_compile``, compilation) and the figures
are set against the run's size: tokens, tokens per step, steps per epoch and in all, the time those steps will take,
and the peak memory so far. ``train.py`` logs the block once its steps are timed; ``scratchgpt plan`` stops there.
"""

import logging
import math
import sys
import time

import torch
from transformers import TrainerCallback


__all__ = ["RealityCheckCallback", "format_duration", "peak_memory"]

logger = logging.getLogger(__name__)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they measure): the most memory torch has allocated on a CUDA device, else the process's peak
    resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), f"allocated by torch on {torch.cuda.get_device_name(device)}"
    try:
        import resource
    except ImportError:  # Windows: psutil (an accelerate dependency) reads the peak working set
        import psutil

        return psutil.Process().memory_info().peak_wset, "process peak working set"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "process peak RSS"  # macOS counts bytes, Linux KiB


def format_duration(seconds: float) -> str:
    """3.2 s, 4 min 05 s, 2 h 07 min, 3 d 04 h."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


class RealityCheckCallback(TrainerCallback):
    """Times ``timed_steps`` optimizer steps after ``warmup`` untimed ones (``timed_steps`` 0: none) and logs the reality check (main process);
    ``result`` then holds its figures. With ``stop_when_done`` (``scratchgpt plan``) training stops there.

    ``block_size`` and ``train_blocks`` size the data; the steps per epoch come from the Trainer's own dataloader
    (per process, divided by gradient accumulation), the steps in all from ``state.max_steps``. A run with fewer
    steps than it needs to time is not reported (it is over before an estimate would help). ``planned_args``: the
    run's own arguments where a plan trains with others (for the evaluations it will make)."""

    def __init__(self, block_size: int, train_blocks: int, timed_steps: int = 5, warmup: int = 1,
                 time_budget: float | None = None, stop_when_done: bool = False, planned_args=None):
        self.block_size, self.train_blocks = block_size, train_blocks
        self.timed_steps, self.warmup = timed_steps, warmup
        self.time_budget, self.stop_when_done = time_budget, stop_when_done
        self.planned_args = planned_args
        self.result: dict | None = None
        self._first_step = self._steps_per_epoch = 0
        self._started: float | None = None
        self._seconds = 0.0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._first_step = state.global_step  # a resumed run times its own first steps
        batches = len(train_dataloader) if train_dataloader is not None else 0
        self._steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        if self.stop_when_done:  # a plan of a run shorter than warm-up and timing times what there is
            self.warmup = min(self.warmup, state.max_steps - 1)
            self.timed_steps = min(self.timed_steps, state.max_steps - self.warmup)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.result is None and 0 < self.timed_steps and self.warmup <= state.global_step - self._first_step:
            self._synchronize(args.device)
            self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        # each step from its start (its batch loaded) to its end (the weights updated), so that an evaluation, a
        # log line or a checkpoint between two steps is not counted as training
        done = state.global_step - self._first_step
        if self.result is not None or self._started is None or done <= self.warmup:
            return
        self._synchronize(args.device)
        self._seconds += time.perf_counter() - self._started
        self._started = None
        if done == self.warmup + self.timed_steps:
            self.result = self._figures(args, state, self._seconds / self.timed_steps)
            if state.is_world_process_zero and not self.stop_when_done:  # a plan prints it itself
                logger.info("%s", self.describe())
            if self.stop_when_done:
                control.should_training_stop = True
        return control

    @staticmethod
    def _synchronize(device: torch.device) -> None:
        if device.type == "cuda":  # kernels run asynchronously: the clock must wait for the step to finish
            torch.cuda.synchronize(device)

    def _figures(self, args, state, seconds_per_step: float) -> dict:
        tokens_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                           * self.block_size)
        memory, memory_kind = peak_memory(args.device)
        steps_left = max(0, state.max_steps - state.global_step)
        return {
            "train_tokens": self.train_blocks * self.block_size,
            "train_blocks": self.train_blocks,
            "block_size": self.block_size,
            "tokens_per_step": tokens_per_step,
            "batch": {"per_device": args.per_device_train_batch_size,
                      "gradient_accumulation_steps": args.gradient_accumulation_steps,
                      "processes": args.world_size},
            "steps_per_epoch": self._steps_per_epoch,
            "total_steps": state.max_steps,
            "epochs": state.max_steps / self._steps_per_epoch,
            "timed_steps": self.timed_steps,
            "seconds_per_step": seconds_per_step,
            "tokens_per_second": tokens_per_step / seconds_per_step,
            "estimated_seconds_per_epoch": self._steps_per_epoch * seconds_per_step,
            "estimated_seconds_total": state.max_steps * seconds_per_step,
            "estimated_seconds_left": steps_left * seconds_per_step,
            "steps_done_before": self._first_step,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "evaluations": self._evaluations(self.planned_args or args, state),
        }

    @staticmethod
    def _evaluations(args, state) -> int:
        every = args.eval_steps
        if args.eval_strategy != "steps" or not every:
            return 0
        every = math.ceil(state.max_steps * every) if every < 1 else every  # below 1: a share of the run
        return state.max_steps // every

    def describe(self) -> str:
        """The block, as logged."""
        r = self.result
        batch = r["batch"]
        lines = [
            f"reality check ({r['timed_steps']} steps timed on this machine):",
            f"  training tokens   {r['train_tokens']:,} ({r['train_blocks']:,} blocks of {r['block_size']})",
            f"  tokens per step   {r['tokens_per_step']:,} ({batch['per_device']} blocks x "
            f"{batch['gradient_accumulation_steps']} accumulation x {batch['processes']} "
            f"process{'es' if batch['processes'] > 1 else ''})",
            f"  steps per epoch   {r['steps_per_epoch']:,}",
            f"  steps in all      {r['total_steps']:,} ({r['epochs']:.2f} epochs)",
            f"  time per step     {r['seconds_per_step']:.3g} s ({r['tokens_per_second']:,.0f} tokens/s)",
            f"  time per epoch    ~{format_duration(r['estimated_seconds_per_epoch'])}",
            f"  time in all       ~{format_duration(r['estimated_seconds_total'])} of training steps"
            + (f", {r['evaluations']} evaluations besides" if r["evaluations"] else ""),
        ]
        if r["steps_done_before"]:
            lines.append(f"  time left         ~{format_duration(r['estimated_seconds_left'])} (resumed at step "
                         f"{r['steps_done_before']:,})")
        lines.append(f"  peak memory       {r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['peak_memory_kind']})")
        if self.time_budget is not None and r["estimated_seconds_left"] > self.time_budget:
            sessions = math.ceil(r["estimated_seconds_left"] / self.time_budget)
            lines.append(f"  time_budget       {format_duration(self.time_budget)}: about {sessions} sessions, each "
                         f"resuming where the last stopped")
        return "\n".join(lines)
