"""Publish a trained model folder (train.py's final folder or one of its checkpoints) to the Hugging Face Hub.

Only an allow-list of files leaves the machine (weights, config, model code, tokenizer, generation config, curves,
metrics) plus a generated model card; optimizer and RNG states stay home unless included explicitly. The token
comes from the caller, ``HF_TOKEN`` or the saved login, and is never printed or written.
"""

import fnmatch
import json
import math
import time
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.repocard_data import EvalResult
from huggingface_hub.utils import validate_repo_id


try:  # the HTTP client huggingface_hub uses: httpx2 in 2.x, httpx in 1.x
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError


__all__ = ["ADAPTER_FILES", "ALLOWED_FILES", "SENSITIVE_FILES", "select_files", "model_card", "push_folder", "push_space"]

ALLOWED_FILES = [
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "config.json", "configuration_scratchgpt.py", "modeling_scratchgpt.py", "loss_scratchgpt.py",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "vocab.json", "merges.txt", "training_curves.png", "metrics.json",
]
# in the onnx/ folder of `scratchgpt convert to-onnx` (transformers.js): the graph and, for large ones, its weights
ONNX_FILES = ["*.onnx", "*.onnx_data"]
# a LoRA run's <output_dir>/adapter (PEFT's files and the tokenizer)
ADAPTER_FILES = ["adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"]


# files that hold secrets rather than a model: an --include pattern does not reach them without include_sensitive
SENSITIVE_FILES = [".env", ".env.*", "*token*", "id_rsa*", "id_ed25519*", ".git*", "*.pem", "*.key", ".netrc"]


def _check_inside(folder: Path, files: list[Path]) -> list[Path]:
    """``files``, unless one is a symbolic link that leads out of ``folder``: then ``ValueError`` naming it (an
    allow-listed name linked to a file elsewhere would publish that file)."""
    root = folder.resolve()
    for path in files:
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise ValueError(f"{path}: a symbolic link to {path.resolve()}, outside {folder}; refusing to publish it "
                             f"(copy the file into the folder if it belongs there)")
    return files


def select_files(folder: str | Path, include: list[str] = (), include_sensitive: bool = False) -> list[Path]:
    """The files of ``folder`` that are published: the allow-list plus any ``include`` glob patterns, except what
    looks like a secret (``SENSITIVE_FILES``: only with ``include_sensitive``). A symbolic link out of the folder is
    refused (``ValueError``)."""
    folder = Path(folder)

    def chosen(name: str) -> bool:
        if any(fnmatch.fnmatch(name, pattern) for pattern in ALLOWED_FILES):
            return True
        if not any(fnmatch.fnmatch(name, pattern) for pattern in include):
            return False
        return include_sensitive or not any(fnmatch.fnmatch(name.lower(), pattern) for pattern in SENSITIVE_FILES)

    files = [p for p in folder.iterdir() if p.is_file() and chosen(p.name)]
    if (folder / "onnx").is_dir():
        files += [p for p in (folder / "onnx").iterdir()
                  if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in ONNX_FILES)]
    return _check_inside(folder, sorted(files))


def _check_model_folder(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise FileNotFoundError(f"{folder}: not a trained model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder}: not a trained model folder (no .safetensors weights)")
    return json.loads(config_file.read_text(encoding="utf-8"))


def _fine_tuning_line(training: dict, merged: bool = True) -> str:
    """How the model was fine-tuned, for the card (empty for a run trained from scratch)."""
    if not training.get("base_model"):
        return ""
    lora = training.get("lora")
    how = [f"LoRA rank {lora['r']} (alpha {lora['alpha']}) on {', '.join(lora['target_modules'])}"
           + (", merged into these weights" if merged else "") if lora else "all weights trained"]
    if training.get("assistant_only_loss"):
        how.append("loss on assistant turns only")
    if training.get("replay"):
        how.append(f"{training['replay']['fraction']:.0%} of the blocks replayed from "
                   f"{', '.join(training['replay']['inputs'])}")
    return f"- Fine-tuned from {training['base_model']}: {'; '.join(how)}.\n"


def _optimizer_words(training: dict) -> str:
    """The card's words for the optimizer: Muon's share and settings beside AdamW's when ``optim`` was muon."""
    muon = training.get("muon")
    if not muon:
        return f"{training['optimizer']}, peak learning rate {training['learning_rate']}"
    return (f"Muon on the blocks' matrices (peak learning rate {muon['learning_rate']}, momentum {muon['momentum']}) "
            f"and AdamW on embeddings, head, LayerNorms and biases (peak learning rate {training['learning_rate']})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _parameters(folder: Path) -> int | None:
    from safetensors import safe_open

    total, seen = 0, set()
    for weights in folder.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():
                if name not in seen:
                    seen.add(name)
                    total += math.prod(handle.get_slice(name).get_shape())
    return total or None


def _kept_words(metrics: dict) -> str:
    """Which step's weights a folder holds, in words, from metrics.json (the last step's when it does not say)."""
    step = metrics.get("global_step", "?")
    kept = metrics.get("kept_weights") or {"step": step}
    if kept["step"] == step:
        return f"those of the last step ({step:,})" if isinstance(step, int) else "those of the last step"
    return f"those of step {kept['step']:,}: {kept['reason']}"


def _data_words(training: dict) -> str:
    """How the card names the training data: the name given for it, else each Hub dataset with its split and the
    commit read (and the other inputs by file name)."""
    given = training.get("data_card_name") or training.get("dataset_name")  # dataset_name: older metrics.json
    if given:
        return given
    words = []
    for dataset in training.get("hub_datasets") or []:
        details = [f"config {dataset['config']}"] if dataset["config"] else []
        details += [f"{dataset['split']} split", f"commit {(dataset['revision'] or '?')[:7]}"]
        words.append(f"[{dataset['name']}](https://huggingface.co/datasets/{dataset['name']}) ({', '.join(details)})")
    return ", ".join(words + [name for name in training["inputs"] if not name.startswith("hf://datasets/")])


def model_card(folder: str | Path, repo_id: str) -> str:
    """A README.md with Hub metadata (model-index with the validation perplexity) and the sections people need."""
    folder = Path(folder)
    config = _check_model_folder(folder)
    metrics = _read_json(folder / "metrics.json") or _read_json(folder.parent / "metrics.json")
    training = metrics.get("training", {})
    is_gpt2 = config.get("model_type") == "gpt2"
    parameters = _parameters(folder)
    perplexity = metrics.get("eval_perplexity")
    name = repo_id.split("/")[-1]
    hub_datasets = training.get("hub_datasets") or []
    data_names = list(dict.fromkeys((["chitchat"] if "chitchat" in training.get("inputs", []) else [])
                                    + [dataset["name"] for dataset in hub_datasets])) or None

    card_data = ModelCardData(
        library_name="transformers",
        license="mit",
        # the Hub lists transformers.js models by these tags
        tags=["scratchgpt", "gpt2", "text-generation", "causal-lm"]
        + (["transformers.js", "onnx"] if any((folder / "onnx").glob("*.onnx")) else []),
        datasets=data_names,
        pipeline_tag="text-generation",
        model_name=name,
        base_model=training["base_model"] if "/" in (training.get("base_model") or "") else None,
        eval_results=[EvalResult(task_type="text-generation", dataset_type="custom", dataset_name="held-out validation",
                                 metric_type="perplexity", metric_value=round(perplexity, 3))] if perplexity else None,
    )
    architecture = "\n".join([
        "| | |", "|---|---|",
        f"| architecture | GPT-2 style decoder ({'GPT2LMHeadModel export' if is_gpt2 else 'ScratchGPTForCausalLM'}) |",
        f"| parameters | {parameters:,} |" if parameters else "| parameters | unknown |",
        f"| layers | {config.get('n_layer')} |", f"| hidden size | {config.get('n_embd')} |",
        f"| attention heads | {config.get('n_head')} |", f"| MLP width | {config.get('n_inner') or 4 * config.get('n_embd', 0)} |",
        f"| context | {config.get('n_positions')} tokens |", f"| vocabulary | {config.get('vocab_size'):,} |",
        f"| activation | {config.get('activation_function')} |",
        f"| tied embeddings | {config.get('tie_word_embeddings', True if is_gpt2 else False)} |",
    ])
    if training:
        hours = metrics.get("train_runtime_total", metrics.get("train_runtime", 0)) / 3600
        trained = _fine_tuning_line(training) + "\n".join([
            f"- Data: {_data_words(training)}: "
            f"{training['train_tokens']:,} training tokens, "
            f"{training['validation_tokens']:,} validation tokens, blocks of {training['block_size']} tokens.",
            f"- {metrics.get('global_step', '?'):,} steps of {training['tokens_per_step']:,} tokens; "
            f"{_optimizer_words(training)}, {training['lr_scheduler']} "
            f"schedule with {training['warmup_steps']} warmup steps, weight decay {training['weight_decay']}, "
            f"{training['precision']}, seed {training['seed']}.",
            f"- Hardware: {training['hardware']}; torch {training['torch']}; {hours:.2f} hours of training.",
            f"- Weights: {_kept_words(metrics)}.",
            *(f"- Note: {warning}." for warning in metrics.get("warnings", [])),
        ])
    else:
        trained = "Training details were not recorded with this folder (no metrics.json)."
    results = (f"| validation perplexity | {perplexity:.2f} |\n| next-token accuracy | "
               f"{metrics.get('eval_accuracy', float('nan')):.3f} |\n| validation loss | "
               f"{metrics.get('eval_loss', float('nan')):.4f} nats/token |") if perplexity else "Not evaluated."
    curves = "![training curves](training_curves.png)" if (folder / "training_curves.png").is_file() else ""
    remote = "" if is_gpt2 else ", trust_remote_code=True"
    body = f"""
# {name}

A small GPT language model trained from scratch with scratchgpt.

## Model

{architecture}

## Training

{trained}

## Evaluation

| metric | value |
|---|---|
{results}

{curves}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model = AutoModelForCausalLM.from_pretrained("{repo_id}"{remote})
tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{remote})
print(pipeline("text-generation", model=model, tokenizer=tokenizer)("Hello", max_new_tokens=40)[0]["generated_text"])
```

{"This is a stock GPT-2 model: any tool that knows GPT-2 loads it." if is_gpt2 else
 "Nothing needs installing: `trust_remote_code=True` runs the model code stored in this repository "
 "(`modeling_scratchgpt.py` and the files beside it; read them first). `scratchgpt convert to-gpt2` exports the "
 "model as a stock GPT-2 that loads without remote code."}
If the tokenizer has a chat template, `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` builds
chat prompts; stop generation at `<|end|>` as well as `<|endoftext|>` (the saved generation config does).

## Limitations

A small model trained on a small corpus: it produces fluent-looking but often incoherent or wrong text, repeats
itself, and reflects the biases of its training data. It has no safety tuning. Use it to learn and experiment,
not for anything that matters.
"""
    return ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n" + body).content


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                revision: str | None = None, commit_message: str | None = None, include: list[str] = (),
                dry_run: bool = False, retries: int = 3, base_model: str | None = None,
                include_sensitive: bool = False) -> dict:
    """Create ``repo_id`` if needed and upload the selected files and a model card in one commit.

    A LoRA adapter folder (``adapter_config.json``; train.py's ``<output_dir>/adapter``) is published as a PEFT
    repository naming its base model: ``base_model`` (a Hub id), or the one its config records if that is a Hub id
    and not a local folder.

    Returns ``{"files": [(path_in_repo, size)], "card": str, "commit_url": str | None}``. Raises ``ValueError`` /
    ``FileNotFoundError`` / ``ConnectionError`` with one-line messages (never containing the token).
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    if (folder / "adapter_config.json").is_file():
        card, files, generated = _adapter_upload(folder, repo_id, base_model)
    else:
        card, generated = model_card(folder, repo_id), {}
        files = [p for p in select_files(folder, include, include_sensitive) if p.name != "README.md"]
    in_repo = {p: p.relative_to(folder).as_posix() for p in files}  # onnx/model.onnx keeps its folder
    listing = [(in_repo[p], p.stat().st_size) for p in files] + [(name, len(data)) for name, data in generated.items()]
    listing.append(("README.md", len(card.encode("utf-8"))))
    if dry_run:
        return {"files": listing, "card": card, "commit_url": None}
    operations = [CommitOperationAdd(path_in_repo=in_repo[p], path_or_fileobj=str(p)) for p in files]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in generated.items()]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    commit_url = _commit(repo_id, operations, token, commit_message or f"Upload {folder.name} with scratchgpt",
                         retries, revision=revision, private=private)
    return {"files": listing, "card": card, "commit_url": commit_url}


def _adapter_upload(folder: Path, repo_id: str, base_model: str | None) -> tuple[str, list[Path], dict]:
    """(card, files, generated files) for an adapter folder; its config is uploaded naming the base's Hub id."""
    config = _read_json(folder / "adapter_config.json")
    if not (folder / "adapter_model.safetensors").is_file() or not config:
        raise FileNotFoundError(f"{folder}: not a LoRA adapter folder (adapter_config.json and "
                                f"adapter_model.safetensors)")
    recorded = config.get("base_model_name_or_path") or ""
    base_model = base_model or (recorded if "/" in recorded and not Path(recorded).exists() else None)
    if base_model is None:
        raise ValueError(f"{folder}: the adapter's base is the local folder {Path(recorded).name or '?'}; publish that "
                         f"model first and give its Hub id with --base-model NAMESPACE/NAME")
    _check_repo_id(base_model)
    config["base_model_name_or_path"] = base_model
    metrics = _read_json(folder.parent / "metrics.json")
    training = metrics.get("training", {})
    perplexity = metrics.get("eval_perplexity")
    card_data = ModelCardData(library_name="peft", license="mit", base_model=base_model, pipeline_tag="text-generation",
                              tags=["scratchgpt", "lora", "text-generation"], model_name=repo_id.split("/")[-1])
    body = f"""
# {repo_id.split("/")[-1]}

A LoRA adapter for [{base_model}](https://huggingface.co/{base_model}), trained with scratchgpt.

{_fine_tuning_line(training, merged=False)}{f"- Validation perplexity {perplexity:.2f}; weights: {_kept_words(metrics)}."
                                   if perplexity else ""}

## Use

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```

`model.merge_and_unload()` gives a plain model of the base's kind.
"""
    card = ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n" + body).content
    files = _check_inside(folder, sorted(p for p in folder.iterdir() if p.name in ADAPTER_FILES))
    generated = {"adapter_config.json": (json.dumps(config, indent=2) + "\n").encode("utf-8")}
    return card, files, generated


def push_space(space_id: str, models: list[str], token: str | None = None, private: bool = False,
               dry_run: bool = False, retries: int = 3, static: bool = False) -> dict:
    """Create (or update) a Gradio Space ``space_id`` serving ``models`` (Hub ids) with scratchgpt's web demo; or,
    with ``static``, a static Space whose page runs ``models[0]`` (a ``convert to-onnx`` export) in the visitor's
    browser (``static_space``).

    Returns ``{"files": [(path_in_repo, size)], "commit_url": str | None}`` (and, with ``dry_run``, which uploads
    nothing, the page's program as ``"app"``)."""
    _check_repo_id(space_id)
    for model in models:
        _check_repo_id(model)
    if static:
        from .static_space import space_files as static_files

        files, program, sdk = static_files(models[0]), "index.html", "static"
    else:
        from .demo import space_files

        files, program, sdk = space_files(models), "app.py", "gradio"
    listing = [(name, len(content)) for name, content in files.items()]
    if dry_run:
        return {"files": listing, "commit_url": None, "app": files[program].decode()}
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in files.items()]
    commit_url = _commit(space_id, operations, token, f"scratchgpt demo for {', '.join(models)}", retries,
                         private=private, repo_type="space", space_sdk=sdk)
    return {"files": listing, "commit_url": commit_url}


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"invalid repo id {repo_id!r}: use 'namespace/name' with letters, digits, '-', '_', '.'")
    if "/" not in repo_id:
        raise ValueError(f"invalid repo id {repo_id!r}: include the namespace, e.g. 'your-name/{repo_id}'")


def _commit(repo_id: str, operations: list, token: str | None, message: str, retries: int,
            revision: str | None = None, private: bool = False, repo_type: str = "model", **create_kwargs) -> str:
    """Create the repository if needed and commit ``operations`` in one commit, retrying network failures; one-line
    errors that never contain the token."""
    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login`")
    api = HfApi(token=token)
    for attempt in range(1, retries + 1):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, **create_kwargs)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
            info = api.create_commit(repo_id, operations, revision=revision, commit_message=message,
                                     repo_type=repo_type)
            return info.commit_url
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status in (401, 403):
                raise ValueError(f"the Hub refused the token for {repo_id} (HTTP {status})") from None
            if status is not None and status < 500:
                raise ValueError(f"the Hub refused the upload to {repo_id} (HTTP {status})") from None
            failure = f"HTTP {status}"
        except (OSError, TransportError) as error:  # connection refused, DNS failure, timeout
            failure = type(error).__name__
        if attempt < retries:
            time.sleep(min(2 ** attempt, 10))
    raise ConnectionError(f"could not upload to {repo_id} after {retries} attempts ({failure})")
