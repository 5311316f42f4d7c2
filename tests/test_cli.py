import json
import logging
import re
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, pipeline

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.cli import main
from scratchgpt.modeling.convert import load_legacy_checkpoint
from scratchgpt.tokenization import bytes_per_token

from .testing_utils import (
    FIXTURES,
    LEGACY_CONFIG,
    SAMPLE_TEXT,
    legacy_state_dict,
    tiny_config,
    tiny_tokenizer,
    write_legacy_folder,
)


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


# --- tokenizer train -------------------------------------------------------------------------------------------------


def test_tokenizer_train_bpe_on_files(tmp_path, capsys):
    (tmp_path / "a.txt").write_text((SAMPLE_TEXT + "\n\n") * 40)
    (tmp_path / "b.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi there"}]}) + "\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"),
                 "--vocab-size", "300", "--output", str(out), "--text-documents", "paragraph"]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary size: 300 (bpe)" in printed and f"saved to {out}" in printed
    tokenizer = AutoTokenizer.from_pretrained(out)
    # every 20th text (paragraphs 20 and 40) was held out, and the figure is measured on exactly those
    paragraphs = [SAMPLE_TEXT] * 40
    held = [paragraphs[19], paragraphs[39]]
    assert f"compression on held-out text (2 texts): {bytes_per_token(tokenizer, held):.2f} bytes/token" in printed
    assert len(tokenizer) == 300 and tokenizer.decode(tokenizer("hi there").input_ids) == "hi there"


def test_tokenizer_train_char(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("abc abc\n\nxyz")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--type", "char",
                 "--output", str(tmp_path / "tok")]) == 0
    assert "vocabulary size: 15 (char)" in capsys.readouterr().out  # 7 specials + "\n abcxyz": the text as written
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")("cab\n").input_ids == [11, 9, 10, 7]


def test_tokenizer_train_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    (tmp_path / "small.txt").write_text("tiny")
    cases = [
        (["--input", str(tmp_path / "missing.txt")], "missing.txt: no such file or folder"),
        (["--input", str(tmp_path / "bad.txt")], "bad.txt:2: not valid UTF-8"),
        (["--input", str(tmp_path / "small.txt"), "--vocab-size", "100"], "vocab_size 100 is too small"),
        (["--input", str(tmp_path / "small.txt"), "--vocab-size", "1000"], "fewer than vocab_size 1000"),
    ]
    for args, message in cases:
        assert main(["tokenizer", "train", *args, "--output", str(tmp_path / "tok")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "small.txt"]


# --- convert legacy --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["checkpoint_tiny", "checkpoint_gpt2_small"])
def test_convert_legacy_gives_a_complete_hub_folder(tmp_path, fixture):
    legacy_tokenizer = FIXTURES / "legacy" / fixture / "tokenizer.json"
    vocab_size = 65 if fixture == "checkpoint_tiny" else 32000
    config = LEGACY_CONFIG | {"vocab_size": vocab_size}
    src = write_legacy_folder(tmp_path / "legacy", legacy_state_dict(config), config)
    shutil.copy(legacy_tokenizer, src / "tokenizer.json")

    assert main(["convert", "legacy", str(src), str(tmp_path / "hub")]) == 0
    names = {p.name for p in (tmp_path / "hub").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "modeling_scratchgpt.py",
            "configuration_scratchgpt.py", "loss_scratchgpt.py", "tokenizer.json", "tokenizer_config.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hub").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hub")
    assert len(tokenizer) == model.config.vocab_size == vocab_size
    assert tokenizer.model_max_length == 16
    ids = tokenizer("ROMEO: But soft!", return_tensors="pt").input_ids
    torch.testing.assert_close(model(ids).logits, load_legacy_checkpoint(src)(ids).logits, atol=0, rtol=0)
    if fixture == "checkpoint_gpt2_small":
        assert (model.config.eos_token_id, model.config.pad_token_id, model.generation_config.eos_token_id) == (0, 1, [0])
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert generator("ROMEO:", max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith("ROMEO:")


def test_convert_legacy_checks_tokenizer_against_config(tmp_path, capsys):
    src = write_legacy_folder(tmp_path / "legacy", legacy_state_dict())  # vocab 50
    shutil.copy(FIXTURES / "legacy" / "checkpoint_tiny" / "tokenizer.json", src / "tokenizer.json")  # 65 symbols
    assert main(["convert", "legacy", str(src), str(tmp_path / "hub")]) == 1
    assert "tokenizer.json has 65 tokens but config.json says vocab_size 50" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()


# --- prepare -----------------------------------------------------------------------------------------------------------


def test_prepare_prints_a_summary_and_reuses(tmp_path, capsys, caplog):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    (tmp_path / "a.txt").write_text("\n\n".join(f"document {i}: {SAMPLE_TEXT[:200]}" for i in range(30)))
    args = ["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(tmp_path / "a.txt"), "--block-size",
            "32", "--output", str(tmp_path / "data"), "--clean", "balanced", "--num-proc", "2", "--text-documents",
            "paragraph"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "validation: a random fraction of the documents" in printed
    assert "token ids as uint16, block size 32, vocabulary 300" in printed
    assert re.search(r"train\s+27\s+[\d,]+\s+[\d,]+\s+\d+", printed) and re.search(r"validation\s+3\s", printed)
    assert "cleaning (balanced): 30 documents in, 30 out" in printed
    with caplog.at_level(logging.INFO, logger="scratchgpt"):
        assert main(args) == 0
    assert "is up to date; reusing it" in caplog.text


def test_prepare_reports_trained_and_masked_tokens(tmp_path, capsys):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    chats = [[{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": f"answer {i}"}]
             for i in range(40)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    args = ["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(tmp_path / "c.jsonl"), "--block-size",
            "16", "--output", str(tmp_path / "data"), "--assistant-only-loss"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    counts = json.loads((tmp_path / "data" / "scratchgpt_data.json").read_text())["splits"]["train"]
    masked = counts["blocks"] * 16 - counts["trained_tokens"]
    assert 0 < counts["trained_tokens"] < masked  # the user turns are longer than the replies
    assert re.search(rf"train\s+36\s+[\d,]+\s+[\d,]+\s+\d+\s+{counts['trained_tokens']:,}\s+{masked:,}\n", printed)


def test_prepare_errors_are_one_line(tmp_path, capsys):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    cases = [
        (["--tokenizer", str(tmp_path / "nope")], "nope: no such tokenizer folder"),
        (["--tokenizer", str(tmp_path / "tok"), "--input", str(tmp_path / "bad.jsonl")], "bad.jsonl:2: invalid JSON"),
    ]
    for args, message in cases:
        full = ["prepare", "--input", str(tmp_path / "bad.jsonl"), "--block-size", "8", "--output",
                str(tmp_path / "data"), *args]
        assert main(full) == 1
        err = capsys.readouterr().err
        assert message in err and len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert not (tmp_path / "data").exists()


# --- generate, chat, evaluate ------------------------------------------------------------------------------------------


def chat_model_folder(folder):
    tokenizer = tiny_tokenizer()
    ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_generate_is_reproducible_with_a_seed(tmp_path, capsys):
    folder = str(chat_model_folder(tmp_path / "model"))
    outputs = []
    for _ in range(2):
        assert main(["generate", folder, "--prompt", "The quick", "--seed", "5", "--max-new-tokens", "12",
                     "--no-stream"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("The quick")
    assert main(["generate", folder, "--prompt", "The quick", "--seed", "5", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == outputs[0].strip()  # streamed: the same text


def test_chat_reads_messages_from_a_file(tmp_path, capsys):
    folder = str(chat_model_folder(tmp_path / "model"))
    (tmp_path / "messages.txt").write_text("Hello there\nHow are you?\n")
    assert main(["chat", folder, "--input", str(tmp_path / "messages.txt"), "--seed", "0", "--max-new-tokens",
                 "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("assistant> ") == 2 and printed.index("you> Hello there\n") < printed.index(
        "you> How are you?\n")  # the user's lines are echoed, as in a terminal


def test_replies_take_half_the_context_by_default_without_a_warning(tmp_path, capsys, caplog):
    """The default is the most the model allows (half its context, 32 for context 64): no "capped" warning on
    every turn; an explicit larger value is capped with one."""
    folder = str(chat_model_folder(tmp_path / "model"))
    caplog.set_level("WARNING", logger="scratchgpt")
    assert main(["generate", folder, "--prompt", "Hi", "--temperature", "0", "--no-stream"]) == 0
    assert "capped" not in caplog.text
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        greedy = model.generate(tokenizer("Hi", return_tensors="pt").input_ids, max_new_tokens=32, do_sample=False,
                                eos_token_id=None)
    assert capsys.readouterr().out.strip() == tokenizer.decode(greedy[0], skip_special_tokens=True).strip()
    assert main(["generate", folder, "--prompt", "Hi", "--max-new-tokens", "100", "--no-stream"]) == 0
    assert "max_new_tokens 100 capped at 32" in caplog.text


def test_evaluate_prints_json(tmp_path, capsys):
    folder = str(chat_model_folder(tmp_path / "model"))
    (tmp_path / "held.txt").write_text(SAMPLE_TEXT[:400])
    assert main(["evaluate", folder, "--input", str(tmp_path / "held.txt"), "--stride", "16", "--block-size", "32",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stride"] == 16 and result["block_size"] == 32 and result["perplexity"] > 1
    assert result["bytes"] == 400 and 0 < result["bits_per_byte"] < 20


def test_train_on_your_own_text_is_one_command(tmp_path, capsys, monkeypatch):
    """`scratchgpt train FILE`: a vocabulary the text can fill, three passes over it (not a fixed step count), the
    text's own first words as the sample prompt, no chat claimed, the best weights kept; run again, nothing to do."""
    from itertools import islice

    from scratchgpt.cli import own_text_vocab_size
    from scratchgpt.data.sources import chitchat_conversations, iter_texts

    text = "\n".join(islice(iter_texts(chitchat_conversations()), 600))  # ~65 KB of plain text
    (tmp_path / "my notes.txt").write_text("Dear diary, today I learned\n" + text)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "my notes.txt", "--use_cpu", "true", "--per_device_train_batch_size", "8"]) == 0
    run = tmp_path / "runs" / "my notes"
    metrics = json.loads((run / "metrics.json").read_text())
    blocks = json.loads((run / "data" / "scratchgpt_data.json").read_text())["splits"]["train"]["blocks"]
    assert metrics["global_step"] == 3 * -(-blocks // 8)  # three epochs of batches of 8 blocks
    assert len(AutoTokenizer.from_pretrained(run)) <= own_text_vocab_size(["my notes.txt"]) < 8192
    assert metrics["training"]["chat"] is False and metrics["samples"][0]["prompt"] == "Dear diary, today I learned"
    assert metrics["kept_weights"]["step"] <= metrics["global_step"] and metrics["warnings"] == []
    printed = capsys.readouterr().out
    assert 'scratchgpt generate runs/my notes --prompt "Dear diary, today I learned"' in printed
    assert "scratchgpt chat" not in printed
    assert main(["train", "my notes.txt", "--use_cpu", "true", "--per_device_train_batch_size", "8"]) == 0
    assert "validation perplexity" not in capsys.readouterr().out  # finished: nothing trained again
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_own_text_vocabulary_grows_with_the_corpus(tmp_path):
    from scratchgpt.cli import own_text_vocab_size

    sizes = {}
    for kilobytes in (10, 100, 1000, 5000):
        path = tmp_path / f"{kilobytes}.txt"
        with open(path, "wb") as out:
            out.truncate(kilobytes * 1000)
        sizes[kilobytes] = own_text_vocab_size([str(path)])
    assert sizes == {10: 512, 100: 1280, 1000: 4096, 5000: 8192}
    assert main(["train"]) == 1


def test_short_commands_print_their_result_and_nothing_else(tmp_path):
    """No library bars ("Writing model shards") or info lines (file formats, HTTP requests) on a short command."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo)}
    result = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "convert", "legacy",
                             str(repo / "examples" / "legacy-tiny"), str(tmp_path / "hub")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("saved ScratchGPTForCausalLM (14,816 parameters)") and result.stderr == ""
    result = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "generate", str(tmp_path / "hub"), "--prompt",
                             "ROMEO:", "--seed", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("ROMEO:") and result.stderr == "", result.stderr


def test_prepare_shows_one_bar_per_long_stage(tmp_path):
    """Reading and tokenizing has one bar, in shards; the libraries' bars for each shard, packing and saving say
    nothing misleading."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    result = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "prepare", "--tokenizer", str(tmp_path / "tok"),
                             "--input", str(repo / "examples" / "chats.jsonl"), "--block-size", "32", "--output",
                             str(tmp_path / "data")], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr
    assert re.search(r"Tokenizing inputs: 100%.* 1/1 ", result.stderr), result.stderr
    for misleading in ("Generating train split", "Saving the dataset", "Map"):
        assert misleading not in result.stderr, misleading
