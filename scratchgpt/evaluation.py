"""Sliding-window perplexity and bits per byte of any causal LM on held-out text.

The text is tokenized once (after the tokenizer's bos/eos token when it has one, so that the first real token is
predicted too) and scored in windows of ``block_size`` tokens that advance by ``stride``: each window scores only
the tokens no earlier window scored, with the rest of the window as context. ``stride == block_size`` gives
(nearly) disjoint windows; a smaller stride gives every token more context (and costs more compute).

Bits per byte divides the total negative log-likelihood (in bits) by the UTF-8 size of the scored text, so it does
not depend on the tokenizer: a character-level and a BPE model can be compared on the same text.
"""

import evaluate
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .generation import context_length
from .metrics import metric_path


__all__ = ["token_nll", "evaluate_text"]


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


def evaluate_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str,
                  block_size: int | None = None, stride: int | None = None, show_progress: bool = False) -> dict:
    """Perplexity, bits per byte and counts for ``text`` (see the module docstring for the windowing)."""
    context = context_length(model)
    block_size = block_size or context
    if context is not None and block_size > context:
        raise ValueError(f"block_size {block_size} is larger than the model context {context}")
    stride = stride or block_size
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    start_token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_token is not None:
        ids = torch.cat([torch.tensor([start_token]), ids])
        scored_text = text
    else:  # the first token is context only: leave its characters out of the byte count
        scored_text = tokenizer.decode(ids[1:])
    if len(ids) < 2:
        raise ValueError("the text is too short to score (fewer than 2 tokens)")
    was_training = model.training
    model.eval()
    nll = token_nll(model, ids, block_size, stride, show_progress)
    model.train(was_training)
    n_bytes = len(scored_text.encode("utf-8"))
    result = evaluate.load(metric_path("perplexity")).compute(nll=nll.tolist(), num_bytes=n_bytes)
    return {"perplexity": result["perplexity"], "bits_per_byte": result["bits_per_byte"],
            "mean_nll": result["mean_nll"], "tokens": result["tokens"], "bytes": n_bytes,
            "block_size": block_size, "stride": stride}
