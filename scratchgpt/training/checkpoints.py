"""Finding a checkpoint to resume from, when a crash may have left the newest one half-written.

The Trainer writes ``checkpoint-N/`` in place (model, optimizer, scheduler, RNG states, and ``trainer_state.json``
last), and ``transformers.trainer_utils.get_last_checkpoint`` returns the highest-numbered folder whether it is
complete or not. ``latest_complete_checkpoint`` checks each file instead and skips, with a warning, any folder that
a killed process left incomplete.
"""

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

from ..loading import check_safetensors


__all__ = ["checkpoint_problem", "latest_complete_checkpoint", "list_checkpoints", "mirror_checkpoint", "saved_world_size"]

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_RNG_RANK = re.compile(r"rng_state_(\d+)\.pth")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest (lowest N) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def checkpoint_problem(checkpoint: Path, world_size: int = 1) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None if every file a resume needs is present and whole."""
    state_file = checkpoint / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is missing or truncated"
    if f"checkpoint-{state.get('global_step')}" != checkpoint.name:
        return f"trainer_state.json is for step {state.get('global_step')}"
    # a LoRA run's checkpoints hold the adapter (PEFT's file names) instead of the model
    weights = "adapter_model.safetensors" if (checkpoint / "adapter_config.json").is_file() else "model.safetensors"
    try:
        check_safetensors(checkpoint / weights)
    except ValueError:
        return f"{weights} is missing or truncated"
    for name in ("optimizer.pt", "scheduler.pt"):
        # torch.save writes a zip archive whose directory sits at the end: a truncated file is not a valid zip
        if not zipfile.is_zipfile(checkpoint / name):
            return f"{name} is missing or truncated"
    rng_files = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    missing = [name for name in rng_files if not zipfile.is_zipfile(checkpoint / name)]
    if missing:
        return f"{', '.join(missing)} missing or truncated"
    return None


def saved_world_size(checkpoint: Path) -> int | None:
    """How many processes saved ``checkpoint``, from its RNG states: the Trainer writes ``rng_state.pth`` in a
    one-process run and ``rng_state_{rank}.pth`` per process otherwise; None where there is none."""
    ranks = [int(m.group(1)) for p in checkpoint.glob("rng_state_*.pth") if (m := _RNG_RANK.fullmatch(p.name))]
    if ranks:
        return max(ranks) + 1
    return 1 if (checkpoint / "rng_state.pth").exists() else None


def latest_complete_checkpoint(folder: str | Path, world_size: int | None = 1) -> Path | None:
    """The highest-numbered complete checkpoint in ``folder``; incomplete newer ones are skipped with a warning.

    ``world_size`` is the number of processes whose RNG states a checkpoint must hold; None takes each checkpoint's
    own (``saved_world_size``), so that a checkpoint of another launch is found, not mistaken for a broken one."""
    for checkpoint in reversed(list_checkpoints(folder)):
        size = world_size or saved_world_size(checkpoint) or 1
        problem = checkpoint_problem(checkpoint, size)
        if problem is None:
            return checkpoint
        if world_size is not None and (saved := saved_world_size(checkpoint)) not in (None, world_size) \
                and checkpoint_problem(checkpoint, saved) is None:
            logger.warning("skipping %s: saved by a launch of %d process%s, not %d", checkpoint, saved,
                           "es" if saved > 1 else "", world_size)
            continue
        logger.warning("skipping %s: %s (left by an interrupted save)", checkpoint, problem)
    return None


def mirror_checkpoint(checkpoint: Path, mirror: str | Path, keep: set[str] | None = None) -> Path:
    """Copy ``checkpoint`` into ``mirror`` under a temporary name, then rename it: the mirror never holds a partial
    checkpoint. With ``keep``, mirrored checkpoints whose names are not in it are removed afterwards."""
    mirror = Path(mirror)
    mirror.mkdir(parents=True, exist_ok=True)
    partial = mirror / f".{checkpoint.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(checkpoint, partial)
    target = mirror / checkpoint.name
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    if keep is not None:
        for old in list_checkpoints(mirror):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
    return target
