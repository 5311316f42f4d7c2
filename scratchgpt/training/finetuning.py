"""What fine-tuning adds to a training run: LoRA adapters through PEFT, replay of pretraining blocks, and the
adapter + merged model saved at the end.

LoRA is PEFT's own (``LoraConfig`` + ``get_peft_model``); this module only checks the settings against the model
first, so that a typo in a module name or a combination PEFT handles wrongly is a one-line error before any work.
"""

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets
from torch import nn

from ..tokenization import save_tokenizer
from .arguments import LORA_TARGET_MODULES, ModelArguments


__all__ = ["ADAPTER_FOLDER", "apply_lora", "lora_settings", "mix_replay", "save_adapter"]

logger = logging.getLogger(__name__)

ADAPTER_FOLDER = "adapter"


def _linear_names(model: nn.Module) -> list[str]:
    """The distinct last parts of the names of the model's Linear layers (what LoRA can target by name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def lora_settings(model: nn.Module, model_args: ModelArguments) -> dict:
    """``LoraConfig`` keyword arguments from the run's keys, checked against ``model``: every target name must name
    a Linear layer (the error lists those there are), and LoRA on a head tied to the embedding is refused (PEFT
    merges such an adapter into the shared matrix, changing the embedding as well)."""
    if importlib.util.find_spec("peft") is None:
        raise ValueError("use_peft needs the peft library: pip install -e \".[finetune]\"")
    targets = list(model_args.lora_target_modules or LORA_TARGET_MODULES)
    available = _linear_names(model)
    if targets == ["all-linear"]:
        targets = "all-linear"
    else:
        unknown = [name for name in targets if name not in available]
        if unknown:
            raise ValueError(f"lora_target_modules: {', '.join(unknown)} match no Linear layer of the model; "
                             f"available: {', '.join(available)} (or all-linear)")
    adapted_head = (targets != "all-linear" and "lm_head" in targets) or "lm_head" in (
        model_args.lora_modules_to_save or [])
    if adapted_head and model.config.tie_word_embeddings:
        raise ValueError("lora: the model's lm_head is tied to its input embedding, and an adapter (or a trained copy) "
                         "of lm_head cannot be merged into a tied matrix correctly: leave lm_head out of "
                         "lora_target_modules and lora_modules_to_save")
    return {"r": model_args.lora_r, "lora_alpha": model_args.lora_alpha, "lora_dropout": model_args.lora_dropout,
            "target_modules": targets, "modules_to_save": model_args.lora_modules_to_save, "task_type": "CAUSAL_LM"}


def apply_lora(model: nn.Module, model_args: ModelArguments):
    """``model`` wrapped by PEFT with LoRA adapters as the run's keys say (``lora_settings``); only they (and
    ``lora_modules_to_save``) are trained."""
    from peft import LoraConfig, get_peft_model

    settings = lora_settings(model, model_args)
    peft_model = get_peft_model(model, LoraConfig(**settings))
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = settings["target_modules"]
    logger.info("LoRA: rank %d, alpha %d on %s: %s of %s parameters trained (%.2f%%)", settings["r"],
                settings["lora_alpha"], targets if isinstance(targets, str) else ", ".join(targets),
                f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return peft_model


def mix_replay(train: Dataset, replay: Dataset, fraction: float, seed: int) -> Dataset:
    """``train`` plus seeded replay blocks, so that ``fraction`` of the result comes from ``replay`` (cycled when it
    is smaller than needed). The Trainer's sampler shuffles the result, so replay blocks spread through every epoch;
    the selection depends on the seed alone, so a resumed run sees the same blocks. (``interleave_datasets`` would
    stop at the end of the smaller dataset or run through all of the larger one; here the fine-tuning data sets the
    length and the replay set is sampled to fit.)"""
    n_replay = round(len(train) * fraction / (1 - fraction))
    if n_replay == 0:
        return train
    order = np.random.default_rng(seed).permutation(len(replay))
    replay = replay.select(np.resize(order, n_replay))
    if "assistant_masks" in replay.column_names:  # replayed text is trained in full, whatever its masks say
        replay = replay.remove_columns("assistant_masks")
    if "assistant_masks" in train.column_names:
        # a mask of all True per replay block (in memory: n_replay x block_size booleans)
        block = len(train[0]["input_ids"])
        replay = replay.map(lambda batch: {"assistant_masks": [[True] * block] * len(batch["input_ids"])},
                            batched=True, features=train.features, keep_in_memory=True)
    mixed = concatenate_datasets([train.with_format(None), replay.with_format(None)])
    return mixed.with_format(train.format["type"], **train.format["format_kwargs"])


def save_adapter(trainer, output_dir: Path) -> Path:
    """Save the trained adapter (with the tokenizer) in ``output_dir/adapter``, through a staging folder; then merge
    it into the model in place (``merge_and_unload``), so that the caller saves a plain model."""
    adapter = output_dir / ADAPTER_FOLDER
    if trainer.is_world_process_zero():
        staging = output_dir / f".{ADAPTER_FOLDER}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.save_pretrained(staging)
        save_tokenizer(trainer.processing_class, staging)
        shutil.rmtree(adapter, ignore_errors=True)
        staging.rename(adapter)
    trainer.model = trainer.model.merge_and_unload()
    return adapter
