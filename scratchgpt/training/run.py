"""What ``train.py`` runs: config -> tokenizer (trained if missing) -> prepared data (built if missing or stale) ->
model -> ``transformers.Trainer`` with automatic resume -> a Hub-format folder with curves and metrics.

Works the same under ``python train.py``, ``accelerate launch train.py`` and ``torchrun``: the Trainer reads the
distributed environment, and the tokenizer and data are built once, on the main process first.
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import evaluate
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerState,
    set_seed,
)

from ..data.prepare import (
    collate_blocks,
    load_prepared,
    opening_words,
    prepare_dataset,
    read_metadata,
    tokenizer_fingerprint,
)
from ..data.hub_datasets import HubDataset, is_hub_input
from ..data.sources import TextSample
from ..errors import write_failure
from ..loading import check_model_folder, check_tokenizer_fits, resolve_model, vocabulary_fingerprint
from ..locking import exclusive_folder
from ..metrics import metric_path
from ..modeling import PRESETS, ScratchGPTConfig, ScratchGPTForCausalLM
from ..modeling.convert import from_gpt2
from ..staging import staged_output, usual_permissions
from ..tokenization import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    UNMARKED_CHAT_TEMPLATE,
    generation_eos_token_ids,
    has_assistant_markers,
    make_portable,
    save_tokenizer,
    train_tokenizer,
)
from ..tokenization.trainers import BOS_EOS_TOKEN, PAD_TOKEN
from .arguments import (
    CHAT_SAMPLE_PROMPTS,
    LORA_TARGET_MODULES,
    MUON,
    DataArguments,
    ModelArguments,
    RunArguments,
    parse_args,
    parse_duration,
)
from .callbacks import (
    GracefulStopCallback,
    MirrorCallback,
    TrainingTimeCallback,
    SampleGenerationCallback,
    generate_samples,
    parameters_are_sharded,
)
from .checkpoints import latest_complete_checkpoint, list_checkpoints, saved_world_size
from .finetuning import apply_lora, lora_settings, mix_replay, save_adapter
from .optimizers import muon_optimizer_cls_and_kwargs
from .reality_check import RealityCheckCallback
from .report import write_report


__all__ = ["main", "build_config", "load_or_train_tokenizer", "compute_metrics", "preprocess_logits_for_metrics"]

logger = logging.getLogger(__name__)

# fields that must agree between a run's config and the checkpoints already in its output_dir
_ARCHITECTURE = ("vocab_size", "n_layer", "n_embd", "n_head", "n_inner", "n_positions", "tie_word_embeddings",
                 "activation_function")


def build_config(model_args: ModelArguments, tokenizer) -> ScratchGPTConfig:
    """The model config: the preset, overridden by any explicit size, with the tokenizer's vocabulary and ids."""
    sizes = {name: getattr(model_args, name) for name in ("n_layer", "n_embd", "n_head", "n_inner", "n_positions")
             if getattr(model_args, name) is not None}
    return ScratchGPTConfig.from_preset(
        model_args.preset or "tiny",
        **sizes,
        vocab_size=len(tokenizer),
        resid_pdrop=model_args.dropout or 0.0,
        embd_pdrop=model_args.dropout or 0.0,
        attn_pdrop=model_args.dropout or 0.0,
        activation_function=model_args.activation_function,
        tie_word_embeddings=model_args.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


SIZE_KEYS = ("n_layer", "n_embd", "n_head", "n_inner", "n_positions")


def load_base_model(model_args: ModelArguments, source: str) -> tuple[ScratchGPTForCausalLM, PreTrainedTokenizerBase]:
    """The model and tokenizer ``model_name_or_path`` names (found at ``source``, from ``resolve_model``), as a
    ScratchGPT model ready to train further.

    Size keys given alongside must agree with the model (``ValueError`` naming each that does not); ``dropout``,
    if given, replaces the model's. A tokenizer without our chat tokens (a legacy character or BPE tokenizer) gets
    them, with the chat template, and the model's embeddings are resized to match; the log says so."""
    name = model_args.model_name_or_path
    if Path(source).is_dir():
        check_model_folder(source)  # a truncated model.safetensors is named, not a traceback
    kind = AutoConfig.from_pretrained(source).model_type
    if kind == "gpt2":
        model = from_gpt2(GPT2LMHeadModel.from_pretrained(source))
    elif kind == "scratchgpt":
        model = ScratchGPTForCausalLM.from_pretrained(source)
    else:
        raise ValueError(f"{name}: a {kind!r} model; train.py continues ScratchGPT and GPT-2 models")
    wanted = {key: getattr(model_args, key) for key in SIZE_KEYS if getattr(model_args, key) is not None}
    if model_args.preset is not None:
        wanted = {**PRESETS[model_args.preset], **wanted}
    disagree = [f"{key} {value} here, {getattr(model.config, key)} in the model" for key, value in wanted.items()
                if getattr(model.config, key) != value]
    if disagree:
        raise ValueError(f"{name}: {'; '.join(disagree)}: leave the size keys out when starting from a model")
    tokenizer = AutoTokenizer.from_pretrained(source)
    check_tokenizer_fits(model.config, tokenizer, name)
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        before = len(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE
        model.resize_token_embeddings(len(tokenizer))
        # a tokenizer that had no end-of-text token gets ours: it separates documents in the prepared data
        tokenizer.eos_token = tokenizer.eos_token or BOS_EOS_TOKEN
        tokenizer.bos_token = tokenizer.bos_token or BOS_EOS_TOKEN
        tokenizer.pad_token = tokenizer.pad_token or PAD_TOKEN
        model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        logger.warning("%s: added the tokens %s and the chat template to its tokenizer; embeddings resized from %d "
                       "to %d", name, ", ".join(missing), before, len(tokenizer))
    if model_args.dropout is not None:  # the run's own dropout instead of the base's, in the config and the modules
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = model_args.dropout
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = model_args.dropout
    if tokenizer.chat_template == UNMARKED_CHAT_TEMPLATE:  # saved before the assistant markers: same text
        tokenizer.chat_template = CHAT_TEMPLATE
    return model, tokenizer


def _check_fine_tuning(model_args: ModelArguments, data_args: DataArguments, tokenizer, base, config) -> None:
    """The fine-tuning settings checked against the tokenizer and model before any data is prepared."""
    if data_args.assistant_only_loss and not has_assistant_markers(tokenizer.chat_template):
        raise ValueError("assistant_only_loss: the tokenizer's chat template has no {% generation %} markers around "
                         "assistant content (scratchgpt's template has them)")
    if bool(data_args.replay_inputs) != (data_args.replay_fraction > 0):
        raise ValueError("replay_inputs and replay_fraction go together: give both (e.g. replay_fraction 0.2) or "
                         "neither")
    if not 0 <= data_args.replay_fraction < 1:
        raise ValueError(f"replay_fraction must be in [0, 1), got {data_args.replay_fraction}")
    if model_args.use_peft:
        if base is None:
            logger.warning("use_peft without model_name_or_path: LoRA adapters on a newly initialised model")
            with torch.device("meta"):  # the module names only: no memory, no random numbers drawn
                base = ScratchGPTForCausalLM(config)
        lora_settings(base, model_args)


def _replay_blocks(data_args: DataArguments, tokenizer, block_size: int, output_dir: Path, seed: int):
    """The training blocks of ``replay_inputs``: a prepared folder as it is (same tokenizer and block size), or
    raw inputs prepared in ``<output_dir>/replay-data``; None without replay."""
    if not data_args.replay_inputs:
        return None
    inputs = data_args.replay_inputs
    metadata = read_metadata(inputs[0]) if len(inputs) == 1 else None
    if metadata is None:
        return prepare_dataset(tokenizer, inputs, output_dir / "replay-data", block_size=block_size, val_fraction=0,
                               clean=data_args.clean, num_proc=data_args.num_proc, seed=seed,
                               text_documents=data_args.text_documents,
                               document_separator=data_args.document_separator)["train"]
    if metadata["settings"]["block_size"] != block_size:
        raise ValueError(f"{inputs[0]}: prepared with block_size {metadata['settings']['block_size']}, this run uses "
                         f"{block_size}")
    if metadata["tokenizer"]["fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"{inputs[0]}: prepared with a different tokenizer than this run's; give the raw inputs "
                         f"instead, to prepare them with this one")
    return load_prepared(inputs[0])["train"]


def load_or_train_tokenizer(data_args: DataArguments, path: Path):
    """Load the tokenizer at ``path``, training it from the run's inputs first if it is not there."""
    if (path / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if data_args.tokenizer_type == "bpe" and len(tokenizer) != data_args.vocab_size \
                and not data_args.vocab_size_at_most:
            logger.warning("using the existing tokenizer at %s (%d tokens); vocab_size %d applies only when one is "
                           "trained: delete that folder to train a new one", path, len(tokenizer),
                           data_args.vocab_size)
        return tokenizer
    logger.info("tokenizer: training a %s tokenizer on the inputs ...", data_args.tokenizer_type)
    sample = TextSample(data_args.inputs, data_args.text_documents, data_args.document_separator,
                        max_bytes=data_args.tokenizer_train_bytes or None)
    tokenizer = train_tokenizer(sample, data_args.tokenizer_type, vocab_size=data_args.vocab_size,
                                show_progress=sys.stderr.isatty(),  # a bar only where one can be drawn
                                at_most=data_args.vocab_size_at_most)
    with staged_output(path) as staging:  # a failed save leaves no half-written tokenizer
        save_tokenizer(tokenizer, staging)
        sample.save_report(staging)
    logger.info("tokenizer: %s tokens (%s) trained on %s, saved in %s", f"{len(tokenizer):,}",
                data_args.tokenizer_type, sample.describe(), path)
    return tokenizer


def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only what the metrics need instead of full (B, T, V) logits: argmax ids and per-token NLL, (B, T-1)."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return logits.argmax(-1), nll


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Validation perplexity and next-token accuracy through the shipped ``evaluate`` metric modules."""
    (predictions, nll), labels = eval_prediction.predictions, eval_prediction.label_ids
    mask = labels[:, 1:] != -100
    perplexity = evaluate.load(metric_path("perplexity")).compute(nll=nll[mask])
    accuracy = evaluate.load(metric_path("next_token_accuracy")).compute(predictions=predictions[mask],
                                                                         references=labels[:, 1:][mask])
    return {"perplexity": perplexity["perplexity"], "accuracy": accuracy["accuracy"]}


def _check_existing_run(output_dir: Path, config: ScratchGPTConfig, use_peft: bool = False) -> None:
    """Refuse to resume checkpoints of a different model (another run's folder, or a changed tokenizer), or of a
    LoRA run in a full run and the other way round."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return
    if (checkpoints[-1] / "adapter_config.json").is_file() != use_peft:
        kind = "LoRA adapters" if not use_peft else "a full model (no LoRA)"
        raise ValueError(f"{output_dir} holds checkpoints of {kind}: set use_peft {str(not use_peft).lower()} to "
                         f"resume them, or use another output_dir (or --fresh true to delete them)")
    saved = json.loads((checkpoints[-1] / "config.json").read_text(encoding="utf-8")) \
        if (checkpoints[-1] / "config.json").is_file() else {}
    different = [f"{name} {saved.get(name)!r} there, {getattr(config, name)!r} here" for name in _ARCHITECTURE
                 if name in saved and saved[name] != getattr(config, name)]
    if different:
        raise ValueError(f"{output_dir} holds checkpoints of a different model ({'; '.join(different)}): use another "
                         f"output_dir, or --fresh true to delete them")


def _quiet() -> None:
    """One line per stage: the libraries' per-step bars (Arrow writes, tokenizing, model shards) off; the Trainer's
    training bar and our own stage lines stay. ``--verbose true`` keeps everything."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def public_names(inputs: list[str]) -> list[str]:
    """What a published card may say about local inputs: file or folder names, never their paths (a Hub dataset
    is named as given: its id is public where it is)."""
    return [path if path == "chitchat" or (is_hub_input(path) and not HubDataset.parse(path).is_local)
            else Path(path.split("?")[0].rstrip("/\\")).name or path for path in inputs]


def hub_datasets_read(data: dict) -> list[dict]:
    """The Hub datasets a prepared folder was read from (its metadata's sources), as the card names them: id,
    config, split and the commit read."""
    found = []
    for source in [*data.get("sources", []), *data.get("validation_sources", [])]:
        if is_hub_input(source["path"]) and not HubDataset.parse(source["path"]).is_local:
            dataset = HubDataset.parse(source["path"])
            found.append({"name": dataset.name, "config": dataset.config, "split": dataset.split,
                          "revision": source["revision"]})
    return found


def _last_step(state: dict, training_args) -> int:
    """The run's last step: max_steps, or for a run counted in epochs the steps its epochs came to (recorded in
    the checkpoint's state, when it was for as many epochs as asked now); 0 when unknown."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    if state.get("num_train_epochs") == training_args.num_train_epochs:
        return state.get("max_steps") or 0
    return 0


def _finished_run(output_dir: Path, checkpoint: Path | None, training_args) -> dict | None:
    """The saved metrics of a run that already reached its last step and saved its final model, else None."""
    if checkpoint is None or not (output_dir / "metrics.json").is_file():
        return None
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    last = _last_step(state, training_args)
    if last <= 0 or state.get("global_step", 0) < last or not any(output_dir.glob("*.safetensors")):
        return None
    try:
        return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    except ValueError:
        return None


def _check_same_launch(checkpoint: Path, world_size: int) -> None:
    """Refuse (one line, before anything is written) to resume a checkpoint saved by another number of processes:
    each process's RNG state and its share of every batch are in the checkpoint, so only the same launch resumes it
    exactly; another would train on with a different batch size and data order, and mix new files with old."""
    saved = saved_world_size(checkpoint)
    if saved is not None and saved != world_size:
        processes = lambda n: f"{n} process{'es' if n > 1 else ''}"  # noqa: E731
        raise ValueError(f"{checkpoint}: saved by a launch of {processes(saved)}, and this one has "
                         f"{processes(world_size)}; resume it with {processes(saved)} as it was started, or start "
                         f"over with --fresh true (deletes the checkpoints) or another output_dir")


def _save_final_model(trainer: Trainer, output_dir: Path) -> None:
    """``trainer.save_model`` (weights, config with auto_map, model code, generation config, tokenizer) into a
    staging folder, then each file renamed into ``output_dir``, the weights last: a save that fails part way (a full
    disk) leaves the previous final model, or none, never a truncated one. Every rank calls it (FSDP gathers)."""
    staging = output_dir / ".final-model.staging"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.save_model(str(staging))
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        failed = write_failure(error)
        if failed is None:
            raise
        step = trainer.state.global_step
        checkpoint = latest_complete_checkpoint(output_dir, trainer.args.world_size)
        if checkpoint is None:
            kept = ("no checkpoint holds the trained weights (none was saved): free some space and run again, which "
                    "trains again")
        elif checkpoint.name == f"checkpoint-{step}":
            kept = f"the trained weights are in {checkpoint}: free some space and run the same command to save them"
        else:
            kept = f"the last complete checkpoint is {checkpoint} (of step {step}): the same command resumes from it"
        raise OSError(f"{output_dir}: the final model could not be written ({failed.strerror or failed}); the disk "
                      f"may be full; {kept}") from error
    if trainer.is_world_process_zero():
        make_portable(staging)
        usual_permissions(staging)
        files = sorted(staging.iterdir(), key=lambda f: (f.suffix == ".safetensors" or f.name.endswith(".index.json"),
                                                          f.name))
        for file in files:
            os.replace(file, output_dir / file.name)
        shutil.rmtree(staging)


def _at_last_step(checkpoint: Path | None, training_args) -> bool:
    if checkpoint is None:
        return False
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    last = _last_step(state, training_args)
    return last > 0 and state["global_step"] >= last


def _load_last_checkpoint(trainer: Trainer, checkpoint: Path) -> dict:
    """Put the trainer where a finished ``trainer.train`` would leave it, from a checkpoint at the run's last step:
    its state, and the weights of that checkpoint or, with ``load_best_model_at_end``, of the best one."""
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    chosen = best if trainer.args.load_best_model_at_end and best and Path(best).is_dir() else str(checkpoint)
    logger.info("%s is at the run's last step (%d): saving the final model from %s, without training", checkpoint,
                trainer.state.global_step, chosen)
    trainer._load_from_checkpoint(chosen)
    return {}


def _total_steps(training_args, n_train_blocks: int) -> int:
    """The run's optimizer steps: max_steps, or the epochs' worth of batches."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    per_step = (training_args.per_device_train_batch_size * training_args.world_size
                * training_args.gradient_accumulation_steps)
    return max(1, math.ceil(n_train_blocks / per_step * training_args.num_train_epochs))


def _tokens_per_step(training_args, block_size: int) -> int:
    return (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size * block_size)


def _warmup_warning(training_args, total_steps: int) -> str | None:
    warmup = training_args.get_warmup_steps(total_steps)
    if warmup < total_steps:
        return None
    return (f"warmup_steps {warmup} is not shorter than the run ({total_steps} steps): the learning rate never reaches "
            f"learning_rate {training_args.learning_rate:g}, so little is learned; lower warmup_steps (e.g. "
            f"{max(1, total_steps // 10)}) or train longer")


def _epochs_warning(training_args, total_steps: int, tokens_per_step: int, train_tokens: int) -> str | None:
    """A warning when a fixed max_steps makes many passes over a small corpus (which it then learns by heart)."""
    passes = total_steps * tokens_per_step / max(train_tokens, 1)
    if training_args.max_steps <= 0 or passes <= 4:
        return None
    return (f"max_steps {training_args.max_steps} makes {passes:.1f} passes over the {train_tokens:,} training tokens; "
            f"past a few, a model learns a small corpus by heart: train fewer steps, use num_train_epochs 3 with "
            f"max_steps -1, or give more text")


def kept_weights(trainer: Trainer) -> dict:
    """Which step's weights the run keeps and why: the last step's, or with ``load_best_model_at_end`` the best
    checkpoint's (by ``metric_for_best_model``, the validation loss by default)."""
    state, args = trainer.state, trainer.args
    best = state.best_model_checkpoint
    if args.load_best_model_at_end and best:
        step = int(Path(best).name.rsplit("-", 1)[-1])
        if step != state.global_step:
            metric = args.metric_for_best_model or "loss"
            metric = "validation loss" if metric in ("loss", "eval_loss") else metric
            return {"step": step, "of": state.global_step,
                    "reason": f"best {metric} ({state.best_metric:.4f}) at step {step} of {state.global_step}, kept "
                              f"by load_best_model_at_end"}
    return {"step": state.global_step, "of": state.global_step, "reason": "the last step"}


def overfitting_warning(log_history: list[dict], margin: float = 0.01) -> str | None:
    """A warning when the validation loss ended more than ``margin`` (relative) above its lowest while the training
    loss went on falling: the model learns its training text by heart."""
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    trains = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    if len(evals) < 2 or not trains:
        return None
    best_step, best = min(evals, key=lambda e: e[1])
    last_step, last = evals[-1]
    at_best = [loss for step, loss in trains if step <= best_step]
    if last <= best * (1 + margin) or not at_best or trains[-1][1] >= at_best[-1]:
        return None
    return (f"the model is overfitting: validation loss rose from {best:.3f} at step {best_step} to {last:.3f} at step "
            f"{last_step} while the training loss fell from {at_best[-1]:.3f} to {trains[-1][1]:.3f}; train for "
            f"about {best_step} steps, give more text, or set load_best_model_at_end true to keep the best weights")


def _training_summary(training_args, data_args: DataArguments, model_args: ModelArguments, block_size: int,
                      data: dict, total_steps: int, replay=None) -> dict:
    """How the run was trained, for metrics.json and the model card."""
    if torch.cuda.is_available() and not training_args.use_cpu:
        hardware = f"{training_args.world_size} x {torch.cuda.get_device_name()}"
    else:
        threads = torch.get_num_threads()
        hardware = f"CPU ({training_args.world_size} process{'es' if training_args.world_size > 1 else ''}, " \
                   f"{threads} thread{'s' if threads > 1 else ''})"
    return {
        # names only: metrics.json and the model card are published, and local paths name users and folders
        "inputs": public_names(data_args.inputs),
        "validation_inputs": public_names(data_args.validation_inputs or []),
        "data_card_name": data_args.data_card_name,
        "hub_datasets": hub_datasets_read(data),
        "base_model": public_names([model_args.model_name_or_path])[0] if model_args.model_name_or_path else None,
        "split_method": data.get("split_method"),
        "train_tokens": data["splits"]["train"]["tokens"],
        "validation_tokens": data["splits"].get("validation", {}).get("tokens", 0),
        "assistant_only_loss": data_args.assistant_only_loss,
        "trained_tokens": data["splits"]["train"].get("trained_tokens", data["splits"]["train"]["tokens"]),
        "replay": {"inputs": public_names(data_args.replay_inputs), "fraction": data_args.replay_fraction}
        if replay is not None else None,
        "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout,
                 "target_modules": list(model_args.lora_target_modules or LORA_TARGET_MODULES),
                 "modules_to_save": model_args.lora_modules_to_save} if model_args.use_peft else None,
        "block_size": block_size,
        "tokens_per_step": _tokens_per_step(training_args, block_size),
        "learning_rate": training_args.learning_rate,
        "lr_scheduler": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup_steps": training_args.get_warmup_steps(total_steps),
        "weight_decay": training_args.weight_decay,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "optimizer": str(getattr(training_args.optim, "value", training_args.optim)),
        "muon": {"learning_rate": training_args.muon_learning_rate, "momentum": training_args.muon_momentum,
                 "weight_decay": training_args.muon_weight_decay} if training_args.optim == MUON else None,
        "seed": training_args.seed,
        "hardware": hardware,
        "torch": torch.__version__,
    }


def main(argv: list[str], plan: bool = False) -> dict:
    """Run training as configured by ``argv`` (``[CONFIG.yaml] [--key value ...]``); returns the final metrics (and
    ``output_dir``).

    With ``plan`` (``scratchgpt plan``), everything up to training is done as for the run (tokenizer and data are
    built and kept for it), then ``reality_check_steps`` steps are timed on a fresh model and the run stops without
    saving anything more; returns ``{"reality_check": figures, "text": the block}``.

    The main process holds ``output_dir``'s lock for the whole run (``locking.exclusive_folder``): a second run on
    the same folder stops at once, naming the first. Under torchrun or accelerate only rank 0 takes it; if it cannot,
    it exits and the launcher stops the other ranks."""
    model_args, data_args, run_args, training_args = parse_args(argv)
    if not run_args.verbose:
        _quiet()
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every parameter takes part in the loss: no search needed
    # the collator reads the blocks' columns itself (assistant_masks -> labels); the Trainer would drop every column
    # the model's forward does not take
    training_args.remove_unused_columns = False
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # nothing to pin for; torch warns about it on every epoch
    if training_args.process_index == 0:
        with exclusive_folder(training_args.output_dir, what="training run"):
            return _train(model_args, data_args, run_args, training_args, plan)
    return _train(model_args, data_args, run_args, training_args, plan)


def _plan_arguments(training_args):
    """The run's arguments for timing a few of its steps: the same batch, precision, optimizer and schedule, and
    nothing evaluated, logged or saved."""
    return dataclasses.replace(training_args, eval_strategy="no", eval_on_start=False, save_strategy="no",
                               load_best_model_at_end=False, logging_strategy="no", report_to=[], disable_tqdm=True)


def _train(model_args: ModelArguments, data_args: DataArguments, run_args: RunArguments, training_args,
           plan: bool = False) -> dict:
    time_budget = parse_duration(run_args.time_budget) if run_args.time_budget else None
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ValueError(f"max_steps {training_args.max_steps} and num_train_epochs {training_args.num_train_epochs}: "
                         f"this run would train zero steps; set max_steps (e.g. 500) or num_train_epochs above 0")
    if training_args.optim == MUON and (training_args.fsdp or training_args.deepspeed):
        raise ValueError("optim muon does not run under FSDP or DeepSpeed (Muon orthogonalises whole matrices, which "
                         "they shard across processes): use DDP (torchrun, accelerate launch --multi_gpu) or another "
                         "optim")
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    tokenizer_path = Path(data_args.tokenizer_path or output_dir / "tokenizer")
    data_path = Path(data_args.prepared_data or output_dir / "data")

    # the context is known from the sizes alone: a block size beyond it fails before any tokenizer is trained
    base_source = resolve_model(model_args.model_name_or_path) if model_args.model_name_or_path else None
    if base_source is not None:
        context = AutoConfig.from_pretrained(base_source).n_positions
    else:
        context = model_args.n_positions or PRESETS[model_args.preset or "tiny"]["n_positions"]
    block_size = data_args.block_size or context
    if block_size > context:
        raise ValueError(f"block_size {block_size} is larger than the model context n_positions {context}")
    # where to resume from (--fresh deletes the checkpoints below); a finished run is not trained, prepared or saved
    # (found whatever launch saved it: a finished run stays finished under any launcher)
    # (a plan times a fresh model whatever the folder holds)
    resume_from = None if run_args.fresh or plan else latest_complete_checkpoint(output_dir, world_size=None)
    if resume_from is not None:
        finished = _finished_run(output_dir, resume_from, training_args)
        if finished is not None:
            logger.warning("%s is a finished run (step %d of %d): nothing to do. The model is in %s; to train "
                           "further, raise max_steps, or start over with --fresh true", output_dir,
                           finished["global_step"], training_args.max_steps if training_args.max_steps > 0
                           else finished["global_step"], output_dir)
            return {**finished, "already_complete": True}
        _check_same_launch(resume_from, training_args.world_size)
    with training_args.main_process_first(desc="tokenizer and prepared data"):
        if model_args.model_name_or_path:
            base, tokenizer = load_base_model(model_args, base_source)
            config = base.config
        else:
            base, tokenizer = None, load_or_train_tokenizer(data_args, tokenizer_path)
            config = build_config(model_args, tokenizer)
        if run_args.fresh and training_args.process_index == 0 and not plan:
            for checkpoint in list_checkpoints(output_dir):
                logger.warning("--fresh: deleting %s", checkpoint)
                shutil.rmtree(checkpoint)
        _check_existing_run(output_dir, config, model_args.use_peft)  # before anything of the run is rebuilt
        _check_fine_tuning(model_args, data_args, tokenizer, base, config)
        dataset = prepare_dataset(tokenizer, data_args.inputs, data_path, block_size=block_size,
                                  val_fraction=data_args.val_fraction, clean=data_args.clean,
                                  num_proc=data_args.num_proc, seed=training_args.seed,
                                  text_documents=data_args.text_documents,
                                  document_separator=data_args.document_separator,
                                  validation_inputs=data_args.validation_inputs,
                                  assistant_only_loss=data_args.assistant_only_loss)
        replay = _replay_blocks(data_args, tokenizer, block_size, output_dir, training_args.seed)
        data_info = read_metadata(data_path)
        splits = data_info["splits"]
        logger.info("data: %s training and %s validation blocks of %d tokens, in %s",
                    f"{splits['train']['blocks']:,}", f"{splits.get('validation', {}).get('blocks', 0):,}",
                    block_size, data_path)

    if resume_from is not None:
        logger.info("resuming from %s", resume_from)
    # a model trained on conversations chats; one trained on plain text continues text (its samples too)
    chat = bool(tokenizer.chat_template) if data_info.get("conversations") is None else data_info["conversations"] > 0
    if data_args.sample_prompts is None:
        data_args.sample_prompts = CHAT_SAMPLE_PROMPTS if chat else opening_words(dataset["train"], tokenizer)

    tokenizer.model_max_length = config.n_positions  # saved with the tokenizer: pipelines truncate to the context
    model = base if base is not None else ScratchGPTForCausalLM(config)
    model.config.tokenizer_vocab_hash = vocabulary_fingerprint(tokenizer)  # checked wherever the model is loaded
    model.set_attn_implementation(model_args.attn_implementation)
    model.generation_config.eos_token_id = generation_eos_token_ids(tokenizer) or None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    base_replies = None
    if base is not None and training_args.process_index == 0 and not parameters_are_sharded(training_args) \
            and not plan:
        # the starting model's replies, to show beside the fine-tuned model's at the end
        base_replies = generate_samples(model, tokenizer, data_args.sample_prompts, data_args.sample_max_new_tokens,
                                        chat=chat)
    if model_args.use_peft:
        model = apply_lora(model, model_args)
    origin = f"from {model_args.model_name_or_path}" if base is not None else f"{model_args.preset or 'tiny'} preset"
    logger.info("model: %s parameters (%s, %d layers x %d, context %d)", f"{model.num_parameters():,}", origin,
                config.n_layer, config.n_embd, config.n_positions)
    logger.debug("model config: %s", config.to_diff_dict())

    eval_dataset = dataset.get("validation")
    if eval_dataset is not None and data_args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    train_dataset = dataset["train"] if replay is None else mix_replay(dataset["train"], replay,
                                                                       data_args.replay_fraction, training_args.seed)
    reality = RealityCheckCallback(block_size, len(train_dataset), timed_steps=max(1, run_args.reality_check_steps) if plan
                                   else run_args.reality_check_steps, warmup=2 if training_args.torch_compile else 1,
                                   time_budget=time_budget, stop_when_done=plan, planned_args=training_args)
    stopper = GracefulStopCallback(time_budget)
    clock = TrainingTimeCallback(resume_from)  # before the mirror, so mirrored checkpoints carry the time too
    callbacks = [reality, stopper, clock,
                 SampleGenerationCallback(tokenizer, data_args.sample_prompts, data_args.sample_max_new_tokens, chat)]
    if run_args.mirror_dir:
        callbacks.append(MirrorCallback(run_args.mirror_dir))
    if plan:  # no stop-and-save on a signal, no samples: a plan only times steps
        callbacks = [reality]
    trainer = Trainer(
        model=model,
        args=_plan_arguments(training_args) if plan else training_args,
        data_collator=collate_blocks,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics if eval_dataset is not None else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if eval_dataset is not None else None,
        callbacks=callbacks,
        optimizer_cls_and_kwargs=muon_optimizer_cls_and_kwargs(model, training_args)
        if training_args.optim == MUON else None,
    )
    total_steps = _total_steps(training_args, len(trainer.train_dataset))
    warnings = [warning for warning in (_warmup_warning(training_args, total_steps),
                                        _epochs_warning(training_args, total_steps,
                                                        _tokens_per_step(training_args, block_size),
                                                        len(trainer.train_dataset) * block_size)) if warning]
    for warning in warnings:
        logger.warning(warning)
    if plan:
        trainer.remove_callback(PrinterCallback)  # with disable_tqdm: no bar and no metrics printed for six steps
        trainer.train()
        return {"reality_check": reality.result, "text": reality.describe()}
    try:
        if _at_last_step(resume_from, training_args):
            # the run trained to the end, and its final save failed: transformers 5.24 resumed at max_steps trains
            # one step more, so the last checkpoint (or the best, with load_best_model_at_end) is loaded instead
            train_metrics = _load_last_checkpoint(trainer, resume_from)
        else:
            train_metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    except Exception as error:
        failed = write_failure(error)
        if failed is None or failed is error:  # not a write, or an OSError that names its file already
            raise
        free = shutil.disk_usage(output_dir).free / 2**20
        raise OSError(f"{output_dir}: a checkpoint could not be written ({failed.strerror or failed}); the disk may "
                      f"be full ({free:,.0f} MB free) or a file-size limit reached; the incomplete checkpoint is "
                      f"skipped when the run resumes") from error
    if stopper.reason is not None:
        logger.warning("stopped at step %d (%s); run the same command again to resume", trainer.state.global_step,
                       stopper.reason)
        return {"stopped": stopper.reason, "global_step": trainer.state.global_step}

    metrics = {**train_metrics, "global_step": trainer.state.global_step,
               "train_runtime_total": clock.total_seconds(),  # every invocation of the run, not only this one
               "kept_weights": kept_weights(trainer)}
    if (warning := overfitting_warning(trainer.state.log_history)) is not None:
        logger.warning(warning)
        warnings.append(warning)
    if metrics["kept_weights"]["step"] != trainer.state.global_step:
        logger.info("the saved weights are those of step %d: %s", metrics["kept_weights"]["step"],
                    metrics["kept_weights"]["reason"])
    metrics["warnings"] = warnings
    if reality.result is not None:
        metrics["reality_check"] = reality.result
    history = list(trainer.state.log_history)  # the curves: the final evaluation is of the kept weights, not a step
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
        metrics["eval_perplexity_from_loss"] = math.exp(metrics["eval_loss"])
        at_start = [entry for entry in trainer.state.log_history if entry.get("step") == 0 and "eval_loss" in entry]
        if at_start:  # eval_on_start: the starting model's score on the same validation blocks
            metrics["eval_perplexity_at_start"] = at_start[0]["eval_perplexity"]
    if model_args.use_peft:
        adapter = save_adapter(trainer, output_dir)  # then trainer.model is the merged model
        logger.info("saved the LoRA adapter in %s", adapter)
    _save_final_model(trainer, output_dir)
    logger.info("saved the model, tokenizer and metrics in %s", output_dir)
    metrics["training"] = {**_training_summary(training_args, data_args, model_args, block_size, data_info,
                                               total_steps, replay), "chat": chat}
    if trainer.is_world_process_zero():
        if not parameters_are_sharded(training_args):
            replies = generate_samples(trainer.model, tokenizer, data_args.sample_prompts,
                                       data_args.sample_max_new_tokens, chat=chat)
            metrics["samples"] = [{"prompt": p, "reply": r} for p, r in zip(data_args.sample_prompts, replies)]
            for sample, base_reply in zip(metrics["samples"], base_replies or []):
                sample["base_reply"] = base_reply
        if metrics["kept_weights"]["step"] == trainer.state.global_step:
            history = trainer.state.log_history
        write_report(output_dir, history, metrics)
    return {**metrics, "output_dir": str(output_dir)}  # where the results are, for the caller (not published)
