"""Trainer callbacks for what the stock Trainer does not do: stop cleanly on a signal or a time budget, mirror
checkpoints, and log sample generations at each evaluation."""

import json
import logging
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..generation import chat_reply, generate_text
from .checkpoints import list_checkpoints, mirror_checkpoint


__all__ = ["GracefulStopCallback", "MirrorCallback", "SampleGenerationCallback", "TrainingTimeCallback",
           "generate_samples", "parameters_are_sharded"]

logger = logging.getLogger(__name__)


class GracefulStopCallback(TrainerCallback):
    """On SIGTERM/SIGINT, or once ``time_budget`` seconds have passed, finish the current step, save a checkpoint
    and stop. With several processes the decision is shared (all-reduce), so every rank stops at the same step."""

    def __init__(self, time_budget: float | None = None):
        self.time_budget = time_budget
        self.reason: str | None = None
        self._started = time.monotonic()
        self._previous_handlers = {}

    def _request_stop(self, signum, frame):
        self.reason = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, saving a checkpoint, then stopping", self.reason)

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._request_stop)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if self.reason is None and self.time_budget is not None and time.monotonic() - self._started > self.time_budget:
            self.reason = "time budget"
            logger.warning("time budget of %.0f s reached: saving a checkpoint and stopping", self.time_budget)
        stop = self.reason is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([float(stop)], device=args.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
            self.reason = self.reason or ("stop requested by another process" if stop else None)
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control


class TrainingTimeCallback(TrainerCallback):
    """Training wall time summed over every invocation of a run: each checkpoint records the total so far in
    ``RUNTIME_FILE``, and a resumed run starts from the figure in the checkpoint it resumes from."""

    RUNTIME_FILE = "scratchgpt_runtime.json"

    def __init__(self, resumed_from: str | Path | None = None):
        self.before = 0.0
        if resumed_from is not None:
            try:
                self.before = float(json.loads((Path(resumed_from) / self.RUNTIME_FILE).read_text())["seconds"])
            except (OSError, ValueError, KeyError):
                logger.warning("%s records no training time; the total counts from this invocation", resumed_from)
        self._started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()

    def total_seconds(self) -> float:
        return self.before + time.monotonic() - self._started

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            (checkpoint / self.RUNTIME_FILE).write_text(json.dumps({"seconds": self.total_seconds()}))


class MirrorCallback(TrainerCallback):
    """Copy every saved checkpoint to a second folder (e.g. a mounted Drive), keeping the same set as the run."""

    def __init__(self, mirror_dir: str | Path):
        self.mirror_dir = Path(mirror_dir)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        local = list_checkpoints(args.output_dir)
        newest = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if newest.is_dir():
            mirror_checkpoint(newest, self.mirror_dir, keep={p.name for p in local})
            logger.info("mirrored %s to %s", newest.name, self.mirror_dir)


def parameters_are_sharded(args) -> bool:
    """FSDP or DeepSpeed: a forward pass needs every rank, so the main process cannot generate on its own."""
    return bool(args.fsdp) or bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


class SampleGenerationCallback(TrainerCallback):
    """After each evaluation, generate from fixed prompts and write the replies to the log (main process only;
    skipped when parameters are sharded across processes)."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int = 40, chat: bool | None = None):
        self.tokenizer, self.prompts, self.max_new_tokens, self.chat = tokenizer, prompts, max_new_tokens, chat

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None or not self.prompts or parameters_are_sharded(args):
            return
        if state.global_step >= state.max_steps:  # the final samples are reported once, with the final results
            return
        for prompt, reply in zip(self.prompts, generate_samples(model, self.tokenizer, self.prompts,
                                                                 self.max_new_tokens, chat=self.chat)):
            logger.info("sample at step %d | %s -> %s", state.global_step, prompt, reply)


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int = 40, seed: int = 0,
                     chat: bool | None = None) -> list[str]:
    """Replies to ``prompts`` sampled with a fixed seed: as chat turns with ``chat`` (by default, when the tokenizer
    has a chat template), else as texts continued."""
    chat = bool(tokenizer.chat_template) if chat is None else chat
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    # fork: the same samples for the same weights, and training's random stream is left exactly as it was
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        replies = [chat_reply(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens)
                   if chat else generate_text(model, tokenizer, prompt, max_new_tokens).strip()
                   for prompt in prompts]
    model.train(was_training)
    return replies
