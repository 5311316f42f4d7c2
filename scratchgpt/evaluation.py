"""Sliding-window perplexity and bits per byte of any causal LM on held-out text.

The documents are tokenized exactly as ``scratchgpt prepare`` tokenizes them for training (plain text literally,
each document followed by ``<|endoftext|>``; see ``data.prepare.encode_documents``), after one ``<|endoftext|>`` so
that the first real token is predicted too, and scored in windows of ``block_size`` tokens that advance by
``stride``: each window scores only the tokens no earlier window scored, with the rest of the window as context.
``stride == block_size`` gives (nearly) disjoint windows; a smaller stride gives every token more context (and costs
more compute).

Bits per byte divides the total negative log-likelihood (in bits) by the UTF-8 size of the scored text, so it does
not depend on the tokenizer: a character-level and a BPE model can be compared on the same text.
"""

from collections.abc import Iterable

import evaluate
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.prepare import encode_documents
from .data.sources import Document
from .generation import context_length
from .metrics import metric_path


__all__ = ["check_windows", "token_nll", "evaluate_documents", "evaluate_text"]


@torch.no_grad()
def token_nll(model: PreTrainedModel, ids: torch.Tensor, block_size: int, stride: int,
              show_progress: bool = False) -> torch.Tensor:
    """Negative log-likelihood (nats) of every token of ``ids`` (1-D) but the first, each scored exactly once.

    Each window is the ``block_size`` tokens ending at the last token it scores and scores ``stride`` new tokens
    (at most ``block_size - 1``: a window needs one token of context for its first prediction).
    """
    if not 0 < stride <= block_size or block_size < 2:
        raise ValueError(f"need 2 <= block_size and 1 <= stride <= block_size, got {block_size} and {stride}")
    step = min(stride, block_size - 1)
    nll = torch.empty(len(ids) - 1, dtype=torch.float64)
    scored = 1  # ids[0] has no context and is never predicted
    with tqdm(total=len(ids) - 1, desc="Scoring", unit="tok", disable=not show_progress) as progress:
        while scored < len(ids):
            end = min(scored + step, len(ids))
            window = ids[max(0, end - block_size): end].unsqueeze(0).to(model.device)
            logits = model(window).logits[0, :-1].float()  # (T-1, V): predictions of window[1:]
            losses = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none")
            nll[scored - 1: end - 1] = losses[-(end - scored):].double().cpu()
            progress.update(end - scored)
            scored = end
    return nll


def check_windows(block_size: int | None, stride: int | None) -> None:
    """Raise ``ValueError`` (one line) for a window length or stride that cannot be used (None means the default)."""
    if block_size is not None and block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    if stride is not None and not 1 <= stride <= (block_size or stride):
        raise ValueError(f"stride must be between 1 and the block size, got {stride}")


def evaluate_documents(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, documents: Iterable[Document],
                       block_size: int | None = None, stride: int | None = None, show_progress: bool = False) -> dict:
    """Perplexity, bits per byte and counts for ``documents`` (strings or conversations), tokenized as for training
    (see the module docstring for the windowing). Bytes are those of the texts (conversations as rendered by the
    chat template); the ``<|endoftext|>`` after each document is scored but has no bytes."""
    check_windows(block_size, stride)
    context = context_length(model)
    block_size = block_size if block_size is not None else context
    if context is not None and block_size > context:
        raise ValueError(f"block_size {block_size} is larger than the model context {context}")
    stride = stride if stride is not None else block_size
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text (eos) token to separate documents")
    documents = list(documents)
    ids = torch.tensor([tokenizer.eos_token_id, *encode_documents(tokenizer, documents)])
    if len(ids) < 3:
        raise ValueError("the text is too short to score (no tokens)")
    n_bytes = sum(len((document if isinstance(document, str) else tokenizer.apply_chat_template(
        document, tokenize=False)).encode("utf-8")) for document in documents)
    was_training = model.training
    model.eval()
    nll = token_nll(model, ids, block_size, stride, show_progress)
    model.train(was_training)
    result = evaluate.load(metric_path("perplexity")).compute(nll=nll.tolist(), num_bytes=n_bytes)
    return {"perplexity": result["perplexity"], "bits_per_byte": result["bits_per_byte"],
            "mean_nll": result["mean_nll"], "tokens": result["tokens"], "bytes": n_bytes,
            "block_size": block_size, "stride": stride}


def evaluate_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str,
                  block_size: int | None = None, stride: int | None = None, show_progress: bool = False) -> dict:
    """``evaluate_documents`` of ``text`` as one document."""
    return evaluate_documents(model, tokenizer, [text], block_size, stride, show_progress)
