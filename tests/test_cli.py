import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.cli import main

from .testing_utils import tiny_config, tiny_tokenizer


def saved_model(folder, with_tokenizer=True):
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    model.save_pretrained(folder)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    return model


def test_convert_to_gpt2_and_back(tmp_path, capsys):
    model = saved_model(tmp_path / "ours")
    assert main(["convert", "to-gpt2", str(tmp_path / "ours"), str(tmp_path / "gpt2")]) == 0
    assert "saved GPT2LMHeadModel" in capsys.readouterr().out
    gpt2 = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").eval()
    assert type(gpt2) is GPT2LMHeadModel
    ids = torch.randint(0, 300, (2, 10))
    assert (gpt2(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    # the tokenizer travels with the weights
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2")("hello world").input_ids == tiny_tokenizer()("hello world").input_ids

    assert main(["convert", "from-gpt2", str(tmp_path / "gpt2"), str(tmp_path / "back")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back) is ScratchGPTForCausalLM
    assert (back(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_convert_without_tokenizer(tmp_path):
    saved_model(tmp_path / "ours", with_tokenizer=False)
    assert main(["convert", "to-gpt2", str(tmp_path / "ours"), str(tmp_path / "gpt2")]) == 0
    assert not (tmp_path / "gpt2" / "tokenizer.json").exists()


def test_convert_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    saved_model(tmp_path / "ours")
    cases = [
        (["to-gpt2", str(tmp_path / "missing"), str(tmp_path / "out")], "missing: not a model folder (no config.json)"),
        (["from-gpt2", str(tmp_path / "ours"), str(tmp_path / "out")], "holds a 'scratchgpt' model, expected 'gpt2'"),
        (["to-gpt2", str(tmp_path / "ours"), str(tmp_path / "ours")], "already exists and is not empty"),
    ]
    for args, message in cases:
        assert main(["convert", *args]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]


def test_command_line_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "convert", "to-gpt2", str(tmp_path / "nope"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("nope: not a model folder (no config.json)")
