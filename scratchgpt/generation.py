"""Text generation and chat for any causal-LM folder (ScratchGPT, a GPT-2 export, a converted legacy checkpoint).

The prompt is cut from the left so that prompt plus new tokens fit the model's context; chat prompts go through the
tokenizer's chat template and stop at the end-of-turn marker as well as at ``<|endoftext|>``.

Prompts are text, as training data is: a literal ``<|endoftext|>`` typed into a ``generate`` prompt or a chat
message is encoded as those characters, never as the special id (only the chat template's own markers are special).
"""

import logging
import math
import threading
from collections.abc import Iterator

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    TextStreamer,
)

from .tokenization import encode_chats, generation_eos_token_ids


__all__ = ["context_length", "check_sampling", "generate_text", "chat_reply", "stream_reply"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 100  # for a model whose config gives no context length


def context_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)


def check_sampling(max_new_tokens: int | None, temperature: float, top_k: int | None, top_p: float | None,
                   repetition_penalty: float | None) -> None:
    """Raise ``ValueError`` (one line naming the setting) for a value generation cannot use."""
    problems = [
        (max_new_tokens is not None and max_new_tokens < 1, f"max_new_tokens must be at least 1, got {max_new_tokens}"),
        (not 0 <= temperature < math.inf, f"temperature must be a finite number >= 0 (0 for greedy decoding), got "
                                          f"{temperature}"),
        (top_k is not None and top_k < 0, f"top_k must be >= 0 (0 for no top-k filter), got {top_k}"),
        (top_p is not None and not 0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
        (repetition_penalty is not None and not 0 < repetition_penalty < math.inf,
         f"repetition_penalty must be a finite number > 0 (1 for none), got {repetition_penalty}"),
    ]
    for wrong, message in problems:
        if wrong:
            raise ValueError(message)


def _sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float | None) -> dict:
    if temperature <= 0:
        return {"do_sample": False, "repetition_penalty": repetition_penalty}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "repetition_penalty": repetition_penalty}


def _prompt_ids(tokenizer, prompt: str | list[dict[str, str]]) -> torch.Tensor:
    """(1, T) ids of a text prompt (special-token strings as text) or of a chat (``[{"role", "content"}]``) through
    the chat template with the assistant's turn opened."""
    if isinstance(prompt, str):
        # verbose=False: a prompt longer than the context is expected; it is cut to fit in _generate
        ids = tokenizer(prompt, return_tensors="pt", split_special_tokens=True, verbose=False).input_ids
        if ids.shape[1] == 0:  # an empty prompt: start a new text, after the start-of-text token as in training
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            if start is None:
                raise ValueError("the prompt is empty and the tokenizer has no start-of-text token to begin with")
            ids = torch.tensor([[start]])
        return ids
    if not tokenizer.chat_template:
        raise ValueError("this model's tokenizer has no chat template; use `generate` instead")
    return torch.tensor([encode_chats(tokenizer, [prompt], add_generation_prompt=True)[0]])


class _StopOnEvent(StoppingCriteria):
    """Ends generation after the current token once ``event`` is set (a stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def _generate(model, tokenizer, ids: torch.Tensor, max_new_tokens: int, streamer=None, stopping_criteria=None,
              **sampling) -> str:
    context = context_length(model)
    if max_new_tokens is None:  # as many as fit: half the context (the other half is kept for the prompt)
        max_new_tokens = context // 2 if context is not None else DEFAULT_MAX_NEW_TOKENS
    if context is not None:
        if max_new_tokens > context // 2:  # leave at least half the context to the prompt
            logger.warning("max_new_tokens %d capped at %d: half the model's context of %d is kept for the prompt",
                           max_new_tokens, context // 2, context)
        max_new_tokens = min(max_new_tokens, context // 2)
        ids = ids[:, -(context - max_new_tokens):]  # a long prompt keeps its end
    ids = ids.to(model.device)
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            eos_token_id=generation_eos_token_ids(tokenizer) or model.generation_config.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                            else tokenizer.eos_token_id, streamer=streamer, stopping_criteria=stopping_criteria,
                            **{k: v for k, v in sampling.items() if v is not None})
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)


def generate_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                  max_new_tokens: int | None = None,
                  temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                  repetition_penalty: float | None = None, stream: bool = False) -> str:
    """Continue ``prompt``; returns the new text. ``max_new_tokens`` defaults to half the model's context (the most
    it allows; more is capped there, with a warning). ``temperature <= 0`` is greedy. With ``stream``, tokens are
    printed to stdout as they come (the prompt first). Seed with ``transformers.set_seed`` for reproducibility."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    ids = _prompt_ids(tokenizer, prompt)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if stream else None
    return _generate(model, tokenizer, ids, max_new_tokens, streamer,
                     **_sampling(temperature, top_k, top_p, repetition_penalty))


def chat_reply(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
               max_new_tokens: int | None = None, temperature: float = 0.8, top_k: int | None = 50,
               top_p: float | None = None, repetition_penalty: float | None = None, stream: bool = False) -> str:
    """The assistant's next turn after ``messages`` (``[{"role", "content"}]``), stopping at the end-of-turn token."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    ids = _prompt_ids(tokenizer, messages)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    return _generate(model, tokenizer, ids, max_new_tokens, streamer,
                     **_sampling(temperature, top_k, top_p, repetition_penalty)).strip()


def stream_reply(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]],
                 max_new_tokens: int | None = None, temperature: float = 0.8, top_k: int | None = 50,
                 top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                 stop: threading.Event | None = None) -> Iterator[str]:
    """The reply to ``prompt`` (a text to continue, or a chat's messages), yielded as it grows: each item is the
    whole text so far. The last item is what ``generate_text`` / ``chat_reply`` return for the same arguments and
    ``seed``. Setting ``stop`` ends it after the current token (the web demo's stop button)."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    ids = _prompt_ids(tokenizer, prompt)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stopping = StoppingCriteriaList([_StopOnEvent(stop)]) if stop is not None else None
    failure = []

    def run():
        try:
            if seed is not None:
                torch.manual_seed(seed)
            _generate(model, tokenizer, ids, max_new_tokens, streamer, stopping,
                      **_sampling(temperature, top_k, top_p, repetition_penalty))
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text if isinstance(prompt, str) else text.strip()
    worker.join()
    if failure:
        raise failure[0]
