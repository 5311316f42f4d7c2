import math

import pytest
import torch

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.evaluation import evaluate_documents, evaluate_text, token_nll
from scratchgpt.tokenization import train_char_tokenizer

from .testing_utils import tiny_config, tiny_tokenizer

PATTERN = "the cat sat on a mat; a dog ran to the log. "


def test_one_window_equals_the_model_loss():
    tokenizer = tiny_tokenizer()
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    text = "The quick brown fox jumps over the lazy dog."
    result = evaluate_text(model, tokenizer, text, block_size=64)
    # scored as training data is made: <|endoftext|>, the text, <|endoftext|>
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(text).input_ids + [tokenizer.eos_token_id]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert result["tokens"] == ids.shape[1] - 1 and result["bytes"] == len(text.encode())
    assert result["bits_per_byte"] == pytest.approx(loss * result["tokens"] / math.log(2) / result["bytes"], rel=1e-6)


@pytest.mark.parametrize("stride", [1, 5, 15, 16])
def test_every_token_is_scored_exactly_once(stride):
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 300, (50,))
    nll = token_nll(model, ids, block_size=16, stride=stride)
    assert nll.shape == (49,) and torch.isfinite(nll).all()
    # the first 15 predictions come from the first window in every case: identical
    first = token_nll(model, ids[:16], block_size=16, stride=16)
    torch.testing.assert_close(nll[:15], first)


@pytest.mark.parametrize("stride", [1, 3, 7, 8])
def test_each_token_is_scored_with_the_context_its_window_gives(stride):
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 300, (30,))
    nll = token_nll(model, ids, block_size=8, stride=stride)
    # independently: windows end every min(stride, 7) tokens; token j is predicted from the window's tokens before it
    step, end = min(stride, 7), 1
    with torch.no_grad():
        while end < 30:
            start, end = end, min(end + step, 30)
            for j in range(start, end):
                context = ids[max(0, end - 8): j + 1]
                expected = torch.nn.functional.cross_entropy(model(context[None]).logits[0, -2:-1], context[-1:])
                assert nll[j - 1].item() == pytest.approx(expected.item(), abs=1e-5), (stride, j)


def test_more_context_never_hurts_a_trained_model():
    torch.manual_seed(0)
    tokenizer = train_char_tokenizer([PATTERN])
    model = ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), n_positions=32))
    ids = torch.tensor(tokenizer(PATTERN * 40).input_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        start = torch.randint(0, len(ids) - 32, (8,))
        batch = torch.stack([ids[s: s + 32] for s in start])
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    held_out = (PATTERN * 6)[7:]  # the same pattern, entered mid-way
    disjoint = evaluate_text(model, tokenizer, held_out, block_size=32, stride=32)
    sliding = evaluate_text(model, tokenizer, held_out, block_size=32, stride=4)
    assert sliding["perplexity"] <= disjoint["perplexity"]
    assert disjoint["perplexity"] < 3  # it did learn the pattern


def test_documents_are_scored_as_they_are_prepared_for_training():
    tokenizer = tiny_tokenizer()
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    text = "literal <|endoftext|> in text"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    result = evaluate_documents(model, tokenizer, [text, chat], block_size=64)
    eos = tokenizer.eos_token_id
    ids = [eos, *tokenizer(text, split_special_tokens=True).input_ids, eos,
           *tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False), eos]
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert result["tokens"] == len(ids) - 1 and result["mean_nll"] == pytest.approx(loss, rel=1e-6)
    assert result["bytes"] == len(text) + len(tokenizer.apply_chat_template(chat, tokenize=False))


def test_bad_windows_are_refused():
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="block_size 65 is larger than the model context 64"):
        evaluate_text(model, tiny_tokenizer(), "some text", block_size=65)
    with pytest.raises(ValueError, match="1 <= stride <= block_size"):
        token_nll(model, torch.arange(10), block_size=8, stride=9)
