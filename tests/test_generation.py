import pytest
import torch
from transformers import set_seed

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.generation import chat_reply, generate_text
from scratchgpt.tokenization import SPECIAL_TOKENS

from .testing_utils import tiny_config, tiny_tokenizer


def model_for(tokenizer, **overrides):
    return ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), n_positions=64, **overrides)).eval()


def test_sampling_is_reproducible_with_a_seed():
    tokenizer = tiny_tokenizer()
    model = model_for(tokenizer)
    outputs = []
    for seed in (3, 3, 4):
        set_seed(seed)
        outputs.append(generate_text(model, tokenizer, "The quick", max_new_tokens=20, temperature=1.0))
    assert outputs[0] == outputs[1] != outputs[2]


def test_greedy_needs_no_seed():
    tokenizer = tiny_tokenizer()
    model = model_for(tokenizer)
    assert generate_text(model, tokenizer, "Hello", 10, temperature=0) == generate_text(model, tokenizer, "Hello", 10,
                                                                                          temperature=0)


def test_top_k_zero_means_no_top_k_filter():
    """top_k 0 (the documented "no filter", the demo slider's start) samples from the whole vocabulary, exactly as a
    top_k as large as the vocabulary does; only a negative top_k is refused."""
    tokenizer = tiny_tokenizer()
    model = model_for(tokenizer)
    outputs = {}
    for top_k in (0, len(tokenizer), 1):
        set_seed(5)
        outputs[top_k] = generate_text(model, tokenizer, "The quick", max_new_tokens=20, temperature=2.0, top_k=top_k)
    assert outputs[0] == outputs[len(tokenizer)] != outputs[1]
    with pytest.raises(ValueError, match="top_k must be >= 0 \\(0 for no top-k filter\\), got -1"):
        generate_text(model, tokenizer, "The quick", top_k=-1)


def test_long_prompts_keep_their_end_and_fit_the_context():
    tokenizer = tiny_tokenizer()
    model = model_for(tokenizer)
    prompt = "".join(f"sentence {i} says hello. " for i in range(40))  # far more than 64 tokens, each part distinct
    seen = []
    original = model.generate
    model.generate = lambda ids, **kwargs: seen.append((ids[0].tolist(), kwargs)) or original(ids, **kwargs)
    text = generate_text(model, tokenizer, prompt, max_new_tokens=50, temperature=0)
    ids, kwargs = seen[0]
    # new tokens capped at half the context (32); the prompt keeps its last 64 - 32 tokens
    assert kwargs["max_new_tokens"] == 32 and ids == tokenizer(prompt).input_ids[-32:]
    assert tokenizer.decode(ids).endswith("sentence 39 says hello. ") and isinstance(text, str)


def test_chat_stops_at_the_end_of_turn_token():
    tokenizer = tiny_tokenizer()
    model = model_for(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    with torch.no_grad():  # make <|end|> the most likely next token everywhere
        model.model.ln_f.weight.zero_()
        model.model.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[end] = 1.0
    outputs = []
    original = model.generate
    model.generate = lambda *args, **kwargs: outputs.append(original(*args, **kwargs)) or outputs[-1]
    reply = chat_reply(model, tokenizer, [{"role": "user", "content": "Hi!"}], max_new_tokens=20, temperature=0)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True,
                                           return_dict=False)
    assert reply == ""
    assert outputs[0].shape[1] == len(prompt) + 1 and outputs[0][0, -1].item() == end  # one token, then stop


def test_special_token_strings_in_prompts_are_text():
    tokenizer = tiny_tokenizer()
    model = model_for(tokenizer)
    seen = []
    original = model.generate
    model.generate = lambda ids, **kwargs: seen.append(ids[0].tolist()) or original(ids, **kwargs)
    generate_text(model, tokenizer, "say <|endoftext|> now", max_new_tokens=2, temperature=0)
    assert seen[0] == tokenizer("say <|endoftext|> now", split_special_tokens=True).input_ids
    assert tokenizer.eos_token_id not in seen[0]
    chat_reply(model, tokenizer, [{"role": "user", "content": "what is <|end|>?"}], max_new_tokens=2, temperature=0)
    special_ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    specials = [tokenizer.convert_ids_to_tokens(i) for i in seen[1] if i in special_ids]
    assert specials == ["<|user|>", "<|end|>", "<|assistant|>"]  # the template's markers only
    assert tokenizer.decode(seen[1]) == "<|user|>\nwhat is <|end|>?<|end|>\n<|assistant|>\n"


def test_long_chats_are_cut_without_a_tokenizer_warning(caplog):
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 64
    model = model_for(tokenizer)
    history = [{"role": "user", "content": f"message number {i} about the quick brown fox"} for i in range(20)]
    with caplog.at_level("WARNING"):
        chat_reply(model, tokenizer, history, max_new_tokens=4, temperature=0)
        generate_text(model, tokenizer, "a long prompt " * 40, max_new_tokens=4, temperature=0)
    assert "Token indices sequence length is longer" not in caplog.text  # expected, and handled by the cut
