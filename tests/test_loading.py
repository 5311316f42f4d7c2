"""The rules of ``scratchgpt/loading.py``, stated one per test: each check names the file or folder that is wrong,
and lets a complete model folder through. (The commands' one-line errors built on them are in test_faults.py.)"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratchgpt.loading import (
    check_model_folder,
    check_tokenizer_fits,
    load_tokenizer,
    resolve_model,
    vocabulary_fingerprint,
)

from .testing_utils import tiny_config, tiny_tokenizer


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    tokenizer = tiny_tokenizer()
    ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_complete_model_folder_passes_every_check(model_folder):
    check_model_folder(model_folder)
    assert resolve_model(str(model_folder)) == str(model_folder)


def test_a_folder_without_config_json_is_not_a_model_folder(model_folder):
    (model_folder / "config.json").unlink()
    assert (model_folder / "model.safetensors").is_file()  # weights alone do not make a model folder
    for check in (check_model_folder, resolve_model):
        with pytest.raises(FileNotFoundError, match=r"model: not a model folder \(no config.json\)$"):
            check(str(model_folder))


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_each_json_file_of_a_model_folder_is_checked(model_folder, name):
    path = model_folder / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated, as by an interrupted copy
    with pytest.raises(ValueError, match=rf"{name}: not valid JSON \(.*\); it may be truncated$"):
        check_model_folder(model_folder)


def test_each_weights_file_is_checked_whole(model_folder):
    weights = model_folder / "model.safetensors"
    (model_folder / "extra.safetensors").write_bytes(weights.read_bytes())
    weights.write_bytes(weights.read_bytes()[:-100])  # the header is intact; the last tensor is short
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file .* truncated"):
        check_model_folder(model_folder)


def test_a_name_that_can_only_be_a_path_is_never_looked_up_on_the_hub(tmp_path):
    for name in (str(tmp_path / "missing"), "./missing", "../missing", "~/missing-model", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=rf"^{name}: no such folder$"):
            resolve_model(name)
    # a name that could be a Hub id is looked up; with HF_HUB_OFFLINE (set for the tests) it says so
    with pytest.raises(FileNotFoundError, match="someone/model: no such local folder, and the Hub is off"):
        resolve_model("someone/model")


def test_a_tokenizer_folder_is_checked_before_transformers_reads_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="tok: no such tokenizer folder"):
        load_tokenizer(tmp_path / "tok")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").get_vocab() == tiny_tokenizer().get_vocab()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match=r"tokenizer.json: not valid JSON"):
        load_tokenizer(tmp_path / "tok")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(250, 350), model_type=st.sampled_from(["scratchgpt", "gpt2"]))
def test_a_tokenizer_fits_a_model_when_every_id_has_its_own_row(rows, model_type):
    """Every id must have an embedding row; a ScratchGPT model has exactly one row per id; other models (GPT-2's
    padded tables) may have spare rows."""
    tokenizer = tiny_tokenizer()  # 300 ids
    config = ScratchGPTConfig(vocab_size=rows) if model_type == "scratchgpt" else type(
        "Config", (), {"vocab_size": rows, "model_type": model_type})()
    fits = rows == 300 or (model_type != "scratchgpt" and rows > 300)
    if fits:
        check_tokenizer_fits(config, tokenizer, "m")
    else:
        with pytest.raises(ValueError, match=f"m: the tokenizer has 300 ids and the model's embedding {rows} rows"):
            check_tokenizer_fits(config, tokenizer, "m")


def test_the_recorded_vocabulary_must_match_not_only_its_size(tmp_path):
    tokenizer = tiny_tokenizer()
    config = ScratchGPTConfig(vocab_size=len(tokenizer), tokenizer_vocab_hash=vocabulary_fingerprint(tokenizer))
    check_tokenizer_fits(config, tokenizer, "m")
    # the same tokens with two ids swapped: the same size, another vocabulary
    tokenizer.save_pretrained(tmp_path / "tok")
    data = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(data))
    swapped = load_tokenizer(tmp_path / "tok")
    assert len(swapped) == len(tokenizer) and vocabulary_fingerprint(swapped) != config.tokenizer_vocab_hash
    with pytest.raises(ValueError, match="m: the tokenizer's vocabulary is not the one this model was trained with"):
        check_tokenizer_fits(config, swapped, "m")
