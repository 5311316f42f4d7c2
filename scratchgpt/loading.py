"""Opening what users point the commands at: a model folder or a Hub id, with one clear line for whatever is wrong.

``resolve_model(name)`` looks for a local folder first. A name that can only be a path (absolute, ``./``, ``../``,
``~``) and is missing is reported as a missing folder. A name that could be either (``runs/demo``) and is not a local
folder is looked up on the Hub once, without retries: if the Hub cannot be reached (offline, no network) or has no
such model, one line says both. ``load_model_and_tokenizer`` checks the weight and tokenizer files before
transformers reads them, so a truncated ``model.safetensors`` or a corrupt ``tokenizer.json`` is named, not a
traceback.
"""

import hashlib
import json
import os
import pickle
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


__all__ = ["check_safetensors", "check_json", "check_model_folder", "check_tokenizer_fits", "resolve_model",
           "load_tokenizer", "load_model_and_tokenizer", "vocabulary_fingerprint"]

HUB_TIMEOUT_S = 10


def check_safetensors(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a readable safetensors file (header and tensor sizes)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                handle.get_slice(name)
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0]}); it may be "
                         f"truncated: copy or download it again") from None


def check_json(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it holds valid JSON."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({str(error).splitlines()[0]}); it may be truncated") from None


def _looks_like_a_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name.count("/") > 1


def resolve_model(name: str) -> str:
    """``name`` as a local model folder, or as a Hub model id that exists; otherwise one-line errors (see above)."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{name}: not a model folder (no config.json)")
        return str(path)
    if _looks_like_a_path(name):
        raise FileNotFoundError(f"{name}: no such folder")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except HFValidationError:
        raise FileNotFoundError(f"{name}: no such folder") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{name}: no such local folder, and no model of that name on the Hub") from None
    except OfflineModeIsEnabled:
        raise FileNotFoundError(f"{name}: no such local folder, and the Hub is off (HF_HUB_OFFLINE is set), so "
                                f"it was not looked up as a model id") from None
    except Exception as error:  # httpx / requests connection errors, timeouts, HTTP errors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(f"{name}: no such local folder, and the Hub could not be reached to look it up "
                                f"as a model id ({reason})") from None
    return name


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder (``save_pretrained`` layout), with its JSON files checked first."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no such tokenizer folder")
    for file_name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / file_name).is_file():
            check_json(folder / file_name)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be loaded as a tokenizer ({str(error).splitlines()[0]})") from None


def check_model_folder(folder: str | Path) -> None:
    """Raise ``ValueError`` naming the file unless every weight and JSON file of a local model folder is readable
    (a truncated ``model.safetensors``, a corrupt ``config.json``), before transformers reads them."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json)")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)
    for file_name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (folder / file_name).is_file():
            check_json(folder / file_name)


def vocabulary_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the tokenizer's vocabulary (token -> id): what decides which embedding row each id means."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocabulary.encode("utf-8")).hexdigest()


def check_tokenizer_fits(config, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Raise ``ValueError`` (one line naming ``where``) unless ``tokenizer`` can be this model's: every id it
    produces has an embedding row; a ScratchGPT model has exactly one row per token (train.py builds it so); and
    where the model records the vocabulary it was trained with (``tokenizer_vocab_hash`` in config.json, written
    by train.py), the tokenizer has that vocabulary: a character tokenizer beside BPE weights of a size that happens
    to fit is refused instead of producing garbage."""
    ids, rows = len(tokenizer), config.vocab_size
    if ids > rows or (config.model_type == "scratchgpt" and ids != rows):
        raise ValueError(f"{where}: the tokenizer has {ids:,} ids and the model's embedding {rows:,} rows: it is not "
                         f"this model's tokenizer")
    recorded = getattr(config, "tokenizer_vocab_hash", None)
    if recorded and recorded != vocabulary_fingerprint(tokenizer):
        raise ValueError(f"{where}: the tokenizer's vocabulary is not the one this model was trained with: put the "
                         f"run's own tokenizer beside the model")


def _shape_mismatch(source: str) -> str:
    """Which config sizes disagree with the weights' shapes (read from the safetensors headers only)."""
    from safetensors import safe_open

    config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8")) if Path(source).is_dir() else {}
    fields = {"wte.weight": "vocab_size", "wpe.weight": "n_positions"}  # the size each table's rows give
    found = []
    for weights in sorted(Path(source).glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():
                field = next((f for suffix, f in fields.items() if key.endswith(suffix)), None)
                if field is not None and config.get(field) != (rows := handle.get_slice(key).get_shape()[0]):
                    found.append(f"{field} {config.get(field)} there, {rows} in {weights.name}")
    return "; ".join(found) or "the tensor shapes differ from what its sizes give"


def load_model_and_tokenizer(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (in eval mode) and its tokenizer from a local folder or a Hub id, checked against each other
    (``check_tokenizer_fits``) and the config against the weights."""
    source = resolve_model(name)
    if Path(source).is_dir():
        check_model_folder(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"{name}: cannot be loaded ({str(error).splitlines()[0]})") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused objects that are not tensors
        raise ValueError(f"{name}: its pytorch_model.bin holds Python objects besides tensors; refused, not "
                         f"unpickled (it could run code). Use a model saved as safetensors") from None
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise ValueError(f"{name}: config.json does not describe these weights ({_shape_mismatch(source)})") from None
    check_tokenizer_fits(model.config, tokenizer, name)
    return model, tokenizer
