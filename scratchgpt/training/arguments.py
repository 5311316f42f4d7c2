"""Run configuration: argument dataclasses per concern, parsed by ``HfArgumentParser`` from a YAML file plus
command-line overrides (the command line wins; a key missing from both takes its default).

    python train.py configs/tiny.yaml --learning_rate 1e-3 --max_steps 200
"""

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.training_args import OptimizerNames

from ..data.hub_datasets import HubDataset
from ..data.sources import CHITCHAT, DEFAULT_SEPARATOR, TOKENIZER_TRAIN_BYTES
from ..modeling import PRESETS


__all__ = ["LORA_TARGET_MODULES", "MUON", "ModelArguments", "DataArguments", "RunArguments",
           "ScratchGPTTrainingArguments", "parse_args", "parse_duration"]


LORA_TARGET_MODULES = ("qkv", "out_proj", "fc_in", "fc_out")


@dataclass
class ModelArguments:
    """What model to build, or which trained model to start from."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "start from this model (a folder or Hub id: ScratchGPT, a GPT-2 export, a converted legacy "
                "checkpoint): its weights, config and tokenizer; size keys must then agree with it or be left out"})
    preset: str | None = field(default=None, metadata={"help": f"size preset: {', '.join(PRESETS)} (default tiny)"})
    n_layer: int | None = field(default=None, metadata={"help": "transformer blocks (overrides the preset)"})
    n_embd: int | None = field(default=None, metadata={"help": "hidden size (overrides the preset)"})
    n_head: int | None = field(default=None, metadata={"help": "attention heads (overrides the preset)"})
    n_inner: int | None = field(default=None, metadata={"help": "MLP width (overrides the preset)"})
    n_positions: int | None = field(default=None, metadata={"help": "context length (overrides the preset)"})
    dropout: float | None = field(default=None, metadata={
        "help": "dropout on embeddings, attention and residuals (default: 0.0 for a new model; a model from "
                "model_name_or_path keeps its own unless this is given)"})
    activation_function: str = field(default="gelu", metadata={"help": "'gelu' (exact) or 'gelu_new' (tanh)"})
    tie_word_embeddings: bool = field(default=False, metadata={"help": "share the LM head with the embedding"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa', 'eager' or 'flash_attention_2'"})
    # LoRA through PEFT; the names of TRL's ModelConfig
    use_peft: bool = field(default=False, metadata={
        "help": "train LoRA adapters (PEFT) instead of every weight; saved in <output_dir>/adapter, merged into the "
                "model in output_dir"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA path"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": f"module names to adapt (default: {' '.join(LORA_TARGET_MODULES)}, the block's Linear layers), or "
                "'all-linear'"})
    lora_modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "modules trained in full beside the adapters and saved with them (e.g. lm_head for an untied head)"})

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


CHAT_SAMPLE_PROMPTS = ["Hi! How are you doing today?", "What do you like to do on weekends?",
                       "Tell me about your favourite food."]


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes training blocks."""

    inputs: list[str] | None = field(default=None, metadata={
        "help": ".txt/.jsonl/.json/.csv/.parquet files (compressed too: .gz, .bz2, .xz, .zst), folders, globs, "
                "hf://datasets/ORG/NAME (a Hub dataset), or 'chitchat' (the default, without dataset_name)"})
    dataset_name: str | None = field(default=None, metadata={
        "help": "a dataset on the Hugging Face Hub (ORG/NAME, or a local folder in the Hub's layout), read with "
                "datasets.load_dataset; added to the inputs"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "the Hub dataset's configuration"})
    dataset_split: str = field(default="train", metadata={
        "help": "the Hub dataset's split to train on; when it is 'train', its own 'validation' (else 'test') split, "
                "if it has one, is the validation split"})
    dataset_revision: str | None = field(default=None, metadata={
        "help": "the Hub dataset's branch, tag or commit (default: main; recorded as the commit it resolved to)"})
    text_column: str | None = field(default=None, metadata={
        "help": "the Hub dataset's column to read: text, or role/content messages (default: 'text', else "
                "'messages')"})
    streaming: bool = field(default=True, metadata={
        "help": "stream the Hub dataset row by row (never stored whole); false downloads it to the datasets cache "
                "first"})
    data_card_name: str | None = field(default=None, metadata={
        "help": "how the model card names the training data (default: the Hub dataset's name, or the inputs' file "
                "names, never their paths)"})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "tokenizer folder; trained there from the inputs if missing (default: <output_dir>/tokenizer)"})
    tokenizer_type: str = field(default="bpe", metadata={"help": "kind to train if missing: 'bpe' or 'char'"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary size to train if missing (bpe: exact)"})
    vocab_size_at_most: bool = field(default=False, metadata={
        "help": "bpe: train at most vocab_size ids, fewer where the corpus cannot fill them, instead of an error "
                "(`scratchgpt train` sets it, as it picks the size itself)"})
    tokenizer_train_bytes: int = field(default=TOKENIZER_TRAIN_BYTES, metadata={
        "help": "train the tokenizer on at most this many bytes of text, sampled evenly over every input (the BPE "
                "trainer's memory grows with the text it sees); 0: all of it"})
    prepared_data: str | None = field(default=None, metadata={
        "help": "prepared dataset folder; built there if missing or stale (default: <output_dir>/data)"})
    block_size: int | None = field(default=None, metadata={"help": "tokens per block (default: model context)"})
    val_fraction: float = field(default=0.1, metadata={
        "help": "fraction held out for validation: of the documents, or of the token stream's tail when there are "
                "fewer than 10 documents"})
    clean: str = field(default="off", metadata={"help": "cleaning mode: off, lenient, balanced, strict"})
    num_proc: int | None = field(default=None, metadata={"help": "worker processes for tokenizing"})
    validation_inputs: list[str] | None = field(default=None, metadata={
        "help": "validation data (files in any input format); then nothing is split off the inputs"})
    text_documents: str = field(default="file", metadata={
        "help": ".txt documents: 'file' (each file verbatim), 'separator' (split at document_separator) or "
                "'paragraph' (split at blank lines)"})
    document_separator: str = field(default=DEFAULT_SEPARATOR, metadata={
        "help": "the literal string between documents in text_documents 'separator' mode (not kept)"})
    assistant_only_loss: bool = field(default=False, metadata={
        "help": "conversation data: train only on assistant turns (content and <|end|>); other tokens get label -100"})
    replay_inputs: list[str] | None = field(default=None, metadata={
        "help": "pretraining data mixed into the training blocks against forgetting: a prepared folder, or inputs "
                "prepared in <output_dir>/replay-data (every token trained)"})
    replay_fraction: float = field(default=0.0, metadata={
        "help": "share of the training blocks drawn from replay_inputs (seeded; e.g. 0.2)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "evaluate on at most this many blocks"})
    sample_prompts: list[str] | None = field(
        default=None,
        metadata={"help": "prompts for the sample generations logged at each evaluation and kept in metrics.json "
                          "(default: chat prompts when the data are conversations, else the opening words of the "
                          "text's first documents, continued)"})
    sample_max_new_tokens: int = field(default=40, metadata={"help": "length of each sample generation"})

    def __post_init__(self):
        if self.dataset_name:
            hub = HubDataset(name=self.dataset_name, config=self.dataset_config_name, split=self.dataset_split,
                             revision=self.dataset_revision, column=self.text_column, streaming=self.streaming)
            self.inputs = [*(self.inputs or []), hub.uri()]
        elif self.inputs is None:
            self.inputs = [CHITCHAT]


@dataclass
class RunArguments:
    """Surviving disconnects, and knowing what a run will cost."""

    fresh: bool = field(default=False, metadata={
        "help": "start from scratch: delete this output_dir's checkpoints instead of resuming from the latest"})
    time_budget: str | None = field(default=None, metadata={
        "help": "save and stop after this much wall time, e.g. '11h30m' (hosted notebooks' session limits)"})
    verbose: bool = field(default=False, metadata={
        "help": "keep every library's progress bars and messages (default: one line per stage, one training bar)"})
    mirror_dir: str | None = field(default=None, metadata={
        "help": "also copy every checkpoint here (e.g. a mounted Drive); written under a temporary name, renamed "
                "when complete"})
    reality_check_steps: int = field(default=5, metadata={
        "help": "optimizer steps timed at the start for the reality check in the log (tokens, steps, estimated "
                "time, peak memory); 0: none"})


MUON = "muon"


@dataclass
class ScratchGPTTrainingArguments(TrainingArguments):
    """transformers' ``TrainingArguments`` plus ``optim: muon`` and Muon's own settings (scratchgpt/training/
    optimizers.py), and a ``logging_steps`` that is a share of the run. transformers validates ``optim`` against its
    own optimizers, which do not include Muon."""

    optim: str = field(default=TrainingArguments.optim, metadata={  # a str: HfArgumentParser would offer only the enum
        "help": "the optimizer: 'muon' (Muon on the blocks' matrices, AdamW on embeddings, head, LayerNorms and "
                "biases), or one of transformers' (adamw_torch, adamw_torch_fused, ...)"})
    logging_steps: float = field(default=0.02, metadata={  # transformers' 500 logs nothing in a short run
        "help": "log the training loss every this many steps; below 1, a share of the run (default 0.02: 50 lines)"})
    muon_learning_rate: float = field(default=0.02, metadata={
        "help": "optim muon: Muon's peak learning rate (learning_rate stays AdamW's; the scheduler scales both)"})
    muon_momentum: float = field(default=0.95, metadata={"help": "optim muon: Muon's momentum (Nesterov)"})
    muon_weight_decay: float = field(default=0.0, metadata={
        "help": "optim muon: decoupled weight decay of the Muon matrices (weight_decay applies to AdamW's share)"})

    def __post_init__(self):
        known = [name.value for name in OptimizerNames]
        name = getattr(self.optim, "value", self.optim)
        if name not in (MUON, *known):
            raise ValueError(f"optim {name!r} is not an optimizer: choose {MUON!r} or one of transformers' "
                             f"({', '.join(known)})")
        if name != MUON:
            return super().__post_init__()
        if self.muon_learning_rate < 0 or not 0 <= self.muon_momentum < 1 or self.muon_weight_decay < 0:
            raise ValueError("optim muon: muon_learning_rate and muon_weight_decay must be >= 0 and muon_momentum in "
                             "[0, 1)")
        self.optim = OptimizerNames.ADAMW_TORCH  # transformers' own checks see AdamW, Muon's partner
        super().__post_init__()
        self.optim = MUON


def parse_duration(text: str) -> float:
    """'11h30m', '45m', '90s', '2h' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"time_budget {text!r} is not a duration like '11h30m', '45m' or '3600'")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _yaml_to_argv(config: dict) -> list[str]:
    """Turn YAML values into command-line tokens so argparse type-checks them exactly like typed flags."""
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, list):
            argv += [f"--{key}", *(str(item) for item in value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


class _Parser(HfArgumentParser):
    def error(self, message):  # argparse would print usage and exit 2; we want one line from the caller
        raise ValueError(message)


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, RunArguments, ScratchGPTTrainingArguments]:
    """``[CONFIG.yaml] [--key value ...]`` -> the four argument dataclasses. Raises ``ValueError`` (one line) for an
    unknown key (naming the closest valid one), a value of the wrong type, or an unreadable config file."""
    parser = _Parser((ModelArguments, DataArguments, RunArguments, ScratchGPTTrainingArguments))
    known = sorted(action.dest for action in parser._actions if action.dest != "help")
    options = {option for action in parser._actions for option in action.option_strings}
    yaml_argv = []
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a mapping of keys to values")
        actions = {action.dest: action for action in parser._actions}
        for key, value in config.items():
            if key not in known:
                raise ValueError(f"{path}: unknown key {key!r}{_suggest(str(key), known)}")
            if isinstance(value, list) and actions[key].nargs not in ("+", "*"):
                raise ValueError(f"{path}: {key} takes one value, got a list")
        yaml_argv = _yaml_to_argv(config)
        argv = argv[1:]
    for token in argv:
        option = token.split("=")[0]
        if option.startswith("--") and option not in options:
            raise ValueError(f"unknown option {option}{_suggest(option[2:], known)}")
    # later occurrences win in argparse: YAML first, then the command line
    return parser.parse_args_into_dataclasses(args=yaml_argv + list(argv))
