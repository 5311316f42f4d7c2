"""Training: argument dataclasses, Trainer callbacks, checkpoint discovery and the run itself (``train.py``)."""

from .arguments import DataArguments, ModelArguments, RunArguments, parse_args
from .checkpoints import latest_complete_checkpoint


__all__ = ["DataArguments", "ModelArguments", "RunArguments", "latest_complete_checkpoint", "parse_args"]
