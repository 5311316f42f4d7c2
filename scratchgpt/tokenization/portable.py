"""Tokenizer folders that every reader knows: transformers 4.x and 5.x, transformers.js, vLLM, llama.cpp's converter.

transformers 5 writes ``"tokenizer_class": "TokenizersBackend"`` (the class it saved from), a name transformers 4.x
and the tools pinned to it (optimum's ONNX exporter among them) do not have, and keeps the chat template only in
``chat_template.jinja``, which older transformers and some other readers ignore. ``PreTrainedTokenizerFast`` is the
same class under the name both majors know, and ``tokenizer_config.json``'s ``chat_template`` is read by all of them:
our folders say so, and keep ``chat_template.jinja`` too (the same text) for the readers that look there first.
transformers 5 loads such a folder exactly as before (the same class, ids and template).
"""

import json
from pathlib import Path

TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def make_portable(folder: str | Path) -> None:
    """Rewrite the tokenizer files ``save_pretrained`` left in ``folder`` in place (see the module docstring); a
    folder without ``tokenizer_config.json`` is left alone."""
    folder = Path(folder)
    config_path = folder / TOKENIZER_CONFIG
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    template_path = folder / CHAT_TEMPLATE_FILE
    if template_path.is_file():
        config["chat_template"] = template_path.read_text(encoding="utf-8")
    # the same layout and key order as transformers' own writer
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)`` in the portable form (``make_portable``)."""
    tokenizer.save_pretrained(folder)
    make_portable(folder)
