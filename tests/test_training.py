import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.locking import lock_paths
from scratchgpt.training.arguments import parse_args, parse_duration
from scratchgpt.training.checkpoints import (
    checkpoint_problem,
    latest_complete_checkpoint,
    mirror_checkpoint,
    saved_world_size,
)
from scratchgpt.training.run import main as train

from .testing_utils import SAMPLE_TEXT, tiny_config

REPO = Path(__file__).resolve().parents[1]


def corpus(folder: Path) -> str:
    docs = [f"Document number {i}. {SAMPLE_TEXT[: 120 + 7 * i]}" for i in range(60)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return str(path)


def tiny_run_args(tmp_path: Path, **overrides) -> list[str]:
    """A run that trains in seconds: 1 layer, 32 dim, context 32, char tokenizer."""
    settings = {
        "inputs": corpus(tmp_path), "tokenizer_type": "char", "vocab_size": 100, "preset": "tiny", "n_layer": 1,
        "n_embd": 32, "n_head": 2, "n_inner": 64, "n_positions": 32, "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "learning_rate": 3e-3, "max_steps": 8,
        "warmup_steps": 2, "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": '{"min_lr_rate": 0.1}',
        "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 4,
        "max_eval_samples": 16, "report_to": "none", "use_cpu": "true", "seed": 7, "dataloader_num_workers": 0,
        "sample_max_new_tokens": 5, "disable_tqdm": "true",
    }
    settings.update(overrides)
    return [token for key, value in settings.items() for token in (f"--{key}", str(value))]


# --- arguments -------------------------------------------------------------------------------------------------------


def test_yaml_then_command_line_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("preset: small\nlearning_rate: 1.0e-3\ninputs: [a.txt, b.txt]\nbf16: false\n"
                      "lr_scheduler_kwargs: {min_lr_rate: 0.1}\noutput_dir: out\n")
    model_args, data_args, run_args, training_args = parse_args([str(config), "--learning_rate", "5e-4"])
    assert model_args.preset == "small" and data_args.inputs == ["a.txt", "b.txt"]
    assert training_args.learning_rate == 5e-4  # the command line wins
    assert training_args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert data_args.val_fraction == 0.1 and run_args.time_budget is None  # missing keys take defaults


@pytest.mark.parametrize(
    "yaml_text, extra, message",
    [
        ("lerning_rate: 0.1\n", [], "unknown key 'lerning_rate'; did you mean 'learning_rate'?"),
        ("", ["--presett", "tiny"], "unknown option --presett; did you mean 'preset'?"),
        ("learning_rate: fast\n", [], "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
        ("max_steps: [1, 2]\n", [], "max_steps takes one value, got a list"),
        ("- a\n- b\n", [], "expected a mapping of keys to values"),
        ("preset: huge\n", [], "unknown preset 'huge'; valid presets: tiny, small, medium, large, xlarge, gpt2_small"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, yaml_text, extra, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text + "output_dir: out\n" if not yaml_text.startswith("-") else yaml_text)
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace("[", r"\[")):
        parse_args([str(config), *extra])


def test_parse_duration():
    assert parse_duration("11h30m") == 41400 and parse_duration("45m") == 2700 and parse_duration("90") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_validation_metrics_skip_masked_positions_and_match_a_direct_computation():
    from transformers import EvalPrediction

    from scratchgpt.training.run import compute_metrics, preprocess_logits_for_metrics

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = -100  # a masked prompt
    labels[2, 4:] = -100  # padding
    predictions, nll = preprocess_logits_for_metrics(logits, labels)
    metrics = compute_metrics(EvalPrediction(predictions=(predictions.numpy(), nll.numpy()), label_ids=labels.numpy()))
    # directly: next-token predictions from position t scored against labels[t + 1], -100 left out
    targets, scored = labels[:, 1:], labels[:, 1:] != -100
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    token_nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    assert metrics["perplexity"] == pytest.approx(torch.exp(token_nll[scored].mean()).item(), rel=1e-6)
    expected_accuracy = (logits[:, :-1].argmax(-1) == targets)[scored].double().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)


def test_weight_decay_applies_to_matrices_only():
    model = ScratchGPTForCausalLM(tiny_config())
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="unused", use_cpu=True, report_to="none"))
    decayed = set(trainer.get_decay_parameter_names(model))
    assert decayed == {name for name, p in model.named_parameters() if p.dim() >= 2}
    assert "model.wpe.weight" in decayed and "model.layers.0.ln_1.weight" not in decayed


# --- checkpoints -------------------------------------------------------------------------------------------------------


def test_half_written_checkpoints_are_skipped_and_mirrors_are_atomic(tmp_path):
    metrics = train(tiny_run_args(tmp_path))
    run = tmp_path / "run"
    assert metrics["global_step"] == 8
    assert checkpoint_problem(run / "checkpoint-8") is None
    assert latest_complete_checkpoint(run) == run / "checkpoint-8"
    # a crash while writing: truncated optimizer state in the newest checkpoint
    optimizer = run / "checkpoint-8" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert checkpoint_problem(run / "checkpoint-8") == "optimizer.pt is missing or truncated"
    assert latest_complete_checkpoint(run) == run / "checkpoint-4"
    (run / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')
    assert latest_complete_checkpoint(run) is None

    mirrored = mirror_checkpoint(run / "checkpoint-8", tmp_path / "drive", keep={"checkpoint-8"})
    assert mirrored == tmp_path / "drive" / "checkpoint-8"
    assert sorted(p.name for p in (tmp_path / "drive").iterdir()) == ["checkpoint-8"]


def complete_checkpoint(folder: Path, step: int = 4, world_size: int = 1) -> Path:
    """A checkpoint folder with every file the Trainer writes, each whole (as a finished save leaves it)."""
    from safetensors.torch import save_file

    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, checkpoint / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({"state": torch.zeros(64)}, checkpoint / name)
    for name in ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]:
        torch.save({"python": [1, 2, 3], "torch": torch.zeros(8)}, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                  "trainer_state.json"])
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_every_file_of_a_checkpoint_is_checked(tmp_path, name, damage):
    complete_checkpoint(tmp_path, step=2)
    checkpoint = complete_checkpoint(tmp_path, step=4)
    assert checkpoint_problem(checkpoint) is None
    target = checkpoint / name
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    assert name in checkpoint_problem(checkpoint)
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"  # falls back to the older one


@settings(max_examples=25, deadline=None)
@given(damage=st.lists(st.sampled_from([None, "model.safetensors", "optimizer.pt", "rng_state.pth",
                                        "trainer_state.json", "adapter_model.safetensors"]), min_size=1, max_size=5))
def test_the_newest_complete_checkpoint_is_the_one_resumed(tmp_path_factory, damage):
    """For any run of checkpoints, each whole or damaged (a file cut in half, or a LoRA checkpoint's adapter
    instead of the model), the one resumed from is the highest-numbered whole one, or none."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("run")
    for i, damaged in enumerate(damage):
        checkpoint = complete_checkpoint(folder, step=2 * (i + 1))
        if damaged == "adapter_model.safetensors":  # a whole LoRA checkpoint: PEFT's file names
            (checkpoint / "model.safetensors").unlink()
            save_file({"lora_A": torch.zeros(2, 4)}, checkpoint / damaged)
            (checkpoint / "adapter_config.json").write_text("{}")
        elif damaged is not None:
            (checkpoint / damaged).write_bytes((checkpoint / damaged).read_bytes()[:-9])
    whole = [i for i, damaged in enumerate(damage) if damaged in (None, "adapter_model.safetensors")]
    expected = folder / f"checkpoint-{2 * (whole[-1] + 1)}" if whole else None
    assert latest_complete_checkpoint(folder) == expected


def test_every_rank_needs_its_rng_state(tmp_path):
    checkpoint = complete_checkpoint(tmp_path, world_size=2)
    assert checkpoint_problem(checkpoint, world_size=2) is None
    (checkpoint / "rng_state_1.pth").write_bytes(b"PK\x03\x04")
    assert checkpoint_problem(checkpoint, world_size=2) == "rng_state_1.pth missing or truncated"
    assert "rng_state_2.pth" in checkpoint_problem(complete_checkpoint(tmp_path / "b", world_size=2), world_size=3)


# --- a full run ------------------------------------------------------------------------------------------------------


def test_the_run_says_which_steps_weights_it_kept(tmp_path, monkeypatch, capsys):
    """With load_best_model_at_end and a best checkpoint before the last step, the saved weights are that
    checkpoint's, and the summary, metrics.json, the card and the curves say so (here the "best" is the highest
    validation loss, so that the first checkpoint is kept)."""
    from scratchgpt.hub import model_card
    from scratchgpt.training import report

    plotted = {}
    monkeypatch.setattr(report, "plot_curves", lambda history, path: plotted.setdefault("history", history))
    monkeypatch.setattr(sys, "argv", ["train.py", *tiny_run_args(tmp_path, load_best_model_at_end="true",
                                                                 metric_for_best_model="eval_loss",
                                                                 greater_is_better="true")])
    import train as train_py

    assert train_py.main() == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kept_weights"]["step"] == 4 and metrics["global_step"] == 8
    assert metrics["kept_weights"]["reason"].startswith("best validation loss (") and "at step 4 of 8" in \
        metrics["kept_weights"]["reason"]
    saved, best = final_weights(run), load_file(run / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(saved[name], best[name]) for name in best)
    assert "of the saved weights, from step 4 (best validation loss" in capsys.readouterr().out
    assert "- Weights: those of step 4: best validation loss" in model_card(run, "me/tiny")
    evaluated = [entry["step"] for entry in plotted["history"] if "eval_loss" in entry]
    assert evaluated == [4, 8]  # the final evaluation (of step 4's weights) is not drawn as a second step 8


@pytest.mark.parametrize("evals, trains, warns", [
    ([(2, 3.0), (4, 2.5), (6, 2.6), (8, 2.8)], [(2, 3.0), (4, 2.4), (6, 2.0), (8, 1.6)], True),  # overfitting
    ([(2, 3.0), (4, 2.5), (6, 2.4), (8, 2.3)], [(2, 3.0), (4, 2.4), (6, 2.0), (8, 1.6)], False),  # still learning
    ([(2, 3.0), (4, 2.5), (8, 2.51)], [(2, 3.0), (4, 2.4), (8, 2.3)], False),  # within the 1% margin: noise
    ([(2, 3.0), (4, 2.5), (8, 2.8)], [(2, 3.0), (4, 2.4), (8, 2.6)], False),  # both rose: diverging, not overfitting
    ([(8, 2.8)], [(8, 1.6)], False),  # one evaluation says nothing
])
def test_overfitting_is_named_when_validation_rises_while_training_falls(evals, trains, warns):
    from scratchgpt.training.run import overfitting_warning

    history = [{"step": s, "loss": v} for s, v in trains] + [{"step": s, "eval_loss": v} for s, v in evals]
    history.sort(key=lambda entry: entry["step"])
    warning = overfitting_warning(history)
    assert (warning is not None) == warns
    if warns:
        assert warning.startswith("the model is overfitting: validation loss rose from 2.500 at step 4 to 2.800 at "
                                  "step 8 while the training loss fell from 2.400 to 1.600")


def test_a_run_without_logging_steps_logs_its_loss(tmp_path):
    """transformers' default (every 500 steps) logs nothing in a 200-step run; ours is a share of the run."""
    args = tiny_run_args(tmp_path, max_steps=100, save_steps=100, eval_steps=100)
    i = args.index("--logging_steps")
    del args[i: i + 2]
    train(args)
    state = json.loads((tmp_path / "run" / "checkpoint-100" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(2, 101, 2))


def test_warmup_longer_than_the_run_is_named(tmp_path, caplog):
    caplog.set_level("WARNING", logger="scratchgpt")
    metrics = train(tiny_run_args(tmp_path, warmup_steps=50, max_steps=4, save_steps=100, eval_steps=100))
    assert any("warmup_steps 50 is not shorter than the run (4 steps)" in w for w in metrics["warnings"])
    assert "warmup_steps 50 is not shorter" in caplog.text
    assert metrics["training"]["warmup_steps"] == 50
    (tmp_path / "b").mkdir()
    ratio = train(tiny_run_args(tmp_path / "b", warmup_steps=0.5, max_steps=4, save_steps=100, eval_steps=100))
    assert ratio["training"]["warmup_steps"] == 2 and ratio["warnings"] == []  # a ratio is counted in steps


def test_a_run_leaves_a_hub_format_folder(tmp_path):
    metrics = train(tiny_run_args(tmp_path, mirror_dir=str(tmp_path / "mirror")))
    run = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "modeling_scratchgpt.py", "configuration_scratchgpt.py",
                 "loss_scratchgpt.py", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "training_curves.png",
                 "metrics.json"):
        assert (run / name).is_file(), name
    assert (run / "tokenizer" / "tokenizer.json").is_file() and (run / "data" / "scratchgpt_data.json").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["global_step"] == 8 and saved["eval_perplexity"] > 1 and 0 <= saved["eval_accuracy"] <= 1
    assert saved["eval_perplexity"] == pytest.approx(saved["eval_perplexity_from_loss"], rel=1e-4)
    assert metrics["eval_loss"] == saved["eval_loss"]
    model = AutoModelForCausalLM.from_pretrained(run)
    tokenizer = AutoTokenizer.from_pretrained(run)
    assert type(model) is ScratchGPTForCausalLM and len(tokenizer) == model.config.vocab_size
    assert model.config.n_positions == 32 and model.generation_config.eos_token_id == [0, 5]
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == ["checkpoint-4", "checkpoint-8"]


def test_validation_loss_agrees_with_evaluate_on_the_same_text(tmp_path):
    # verbatim text (blank lines and all) with its own validation file, as a user with a book and a held-out chapter
    text = "".join(f"Scene {i}.\n\nROMEO:\n  {SAMPLE_TEXT[i: i + 60 + i % 13]}\n\n\n" for i in range(150))
    cut = int(len(text) * 0.85)
    (tmp_path / "train.txt").write_text(text[:cut])
    (tmp_path / "valid.txt").write_text(text[cut:])
    metrics = train(tiny_run_args(tmp_path, inputs=str(tmp_path / "train.txt"),
                                  validation_inputs=str(tmp_path / "valid.txt"), max_eval_samples=1000))
    data = json.loads((tmp_path / "run" / "data" / "scratchgpt_data.json").read_text())
    assert data["split_method"] == "validation_inputs" and data["splits"]["validation"]["blocks"] >= 50
    result = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "evaluate", str(tmp_path / "run"), "--input",
                             str(tmp_path / "valid.txt"), "--json"], capture_output=True, text=True, check=True)
    evaluated = json.loads(result.stdout)
    assert evaluated["mean_nll"] == pytest.approx(metrics["eval_loss"], rel=0.02)


def test_train_py_output_is_one_line_per_stage_and_ends_with_next_steps(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *tiny_run_args(tmp_path, disable_tqdm="false")],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("tokenizer: training a char tokenizer", "data: ", "model: ", "saved the model"):
        assert result.stderr.count(stage) == 1, stage
    for noise in ("Generating train split", "Tokenizing", "Writing model shards", "Saving the dataset"):
        assert noise not in result.stderr, noise
    # the final samples, once; plain text is continued from its own first words, not answered as a chat
    assert result.stdout.count("\n> Document number 0. The quick\n") == 1 and "> Hi!" not in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [s["prompt"] for s in metrics["samples"]] == ["Document number 0. The quick"]  # one file: one document
    assert metrics["training"]["chat"] is False
    assert "sample at step 8" not in result.stderr  # not logged again at the final evaluation
    # next steps for a text model: generate from its own first words (chat is offered to chat-trained models only)
    assert f'scratchgpt generate {tmp_path / "run"} --prompt "Document number 0. The quick"' in result.stdout
    assert "scratchgpt chat" not in result.stdout and "push_to_hub.py" in result.stdout


def test_the_summary_offers_chat_to_chat_models_only():
    from scratchgpt.training.report import run_summary

    chat = run_summary({"global_step": 8, "output_dir": "runs/x", "training": {"chat": True}})
    text = run_summary({"global_step": 8, "output_dir": "runs/x", "training": {"chat": False},
                        "samples": [{"prompt": "It was", "reply": " a night"}]})
    assert "scratchgpt chat runs/x" in chat and '--prompt "Once upon a time"' in chat
    assert "scratchgpt chat" not in text and 'scratchgpt generate runs/x --prompt "It was"' in text


SIZE_OPTIONS = ("--n_layer", "--n_embd", "--n_head", "--n_inner", "--n_positions", "--preset")


def without_sizes(args: list[str]) -> list[str]:
    """tiny_run_args without its size options (a run that starts from a model takes the model's sizes)."""
    return [token for i, token in enumerate(args) if token not in SIZE_OPTIONS and args[i - 1] not in SIZE_OPTIONS]


def test_training_continues_from_a_trained_model(tmp_path):
    (tmp_path / "base").mkdir()
    train(tiny_run_args(tmp_path / "base"))
    base = tmp_path / "base" / "run"
    (tmp_path / "new.txt").write_text("New text to continue pretraining on. " * 200)
    args = tiny_run_args(tmp_path, inputs=str(tmp_path / "new.txt"), model_name_or_path=str(base),
                         learning_rate=0.0, max_steps=2, save_steps=100, eval_steps=100)
    metrics = train(without_sizes(args))
    # learning rate 0: the weights are exactly the base model's, so they came from it
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert metrics["training"]["base_model"] == "run"
    assert json.loads((tmp_path / "run" / "tokenizer.json").read_text()) == \
        json.loads((base / "tokenizer.json").read_text())  # its tokenizer, not a new one


@pytest.mark.parametrize("extra, message", [
    ({"n_layer": 3}, "n_layer 3 here, 1 in the model"),
    ({"preset": "small"}, "n_layer 4 here, 1 in the model"),
    ({"model_name_or_path": "/nowhere/model"}, "/nowhere/model: no such folder"),
])
def test_a_base_model_that_does_not_fit_is_refused(tmp_path, extra, message):
    (tmp_path / "base").mkdir()
    train(tiny_run_args(tmp_path / "base", max_steps=2, save_steps=100, eval_steps=100))
    args = without_sizes(tiny_run_args(tmp_path, model_name_or_path=str(tmp_path / "base" / "run")))
    args += [token for key, value in extra.items() for token in (f"--{key}", str(value))]
    with pytest.raises((ValueError, OSError), match=message):
        train(args)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_legacy_character_model_gets_the_chat_tokens(tmp_path, caplog):
    from scratchgpt.modeling.convert import convert_legacy_checkpoint

    from .testing_utils import FIXTURES, legacy_state_dict, write_legacy_folder

    config = json.loads((FIXTURES / "legacy" / "checkpoint_tiny" / "config.json").read_text())
    config.update(embed_dim=32, num_heads=2, num_layers=1, ff_dim=64, max_seq_len=32)
    config.pop("total_parameters")
    legacy = write_legacy_folder(tmp_path / "legacy", legacy_state_dict(config), config)
    (legacy / "tokenizer.json").write_bytes((FIXTURES / "legacy" / "checkpoint_tiny" / "tokenizer.json").read_bytes())
    model, tokenizer = convert_legacy_checkpoint(legacy)
    model.save_pretrained(tmp_path / "converted")
    tokenizer.save_pretrained(tmp_path / "converted")
    (tmp_path / "play.txt").write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n\n" * 40)
    args = ["--model_name_or_path", str(tmp_path / "converted"), "--inputs", str(tmp_path / "play.txt"),
            "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no",
            "--sample_max_new_tokens", "3", "--disable_tqdm", "true"]
    with caplog.at_level("WARNING", logger="scratchgpt"):
        train(args)
    assert "added the tokens" in caplog.text and "embeddings resized from 65 to 71" in caplog.text
    assert load_file(tmp_path / "run" / "model.safetensors")["model.wte.weight"].shape[0] == 71


def test_rerunning_a_finished_run_does_nothing(tmp_path, caplog):
    first = train(tiny_run_args(tmp_path))
    run = tmp_path / "run"
    saved = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    with caplog.at_level("WARNING", logger="scratchgpt"):
        again = train(tiny_run_args(tmp_path))
    assert again["already_complete"] and again["global_step"] == first["global_step"] == 8
    assert "is a finished run (step 8 of 8): nothing to do" in caplog.text and "raise max_steps" in caplog.text
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert after == saved  # nothing trained, nothing written, no checkpoint pushed out
    assert train(tiny_run_args(tmp_path, max_steps=10))["global_step"] == 10  # a higher max_steps trains on


def test_training_time_is_summed_over_invocations(tmp_path):
    train(tiny_run_args(tmp_path, max_steps=4))
    first = json.loads((tmp_path / "run" / "checkpoint-4" / "scratchgpt_runtime.json").read_text())["seconds"]
    metrics = train(tiny_run_args(tmp_path, max_steps=8))  # resumes from checkpoint-4
    assert first > 0 and metrics["train_runtime_total"] >= first + metrics["train_runtime"] * 0.9
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train_runtime_total"] == metrics["train_runtime_total"]


def test_block_size_beyond_the_context_is_refused(tmp_path):
    with pytest.raises(ValueError, match="block_size 64 is larger than the model context n_positions 32"):
        train(tiny_run_args(tmp_path, block_size=64))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("tokenizer*"))  # checked before any work


@pytest.mark.parametrize("change, message", [
    ({"n_embd": 64}, "n_embd 32 there, 64 here"),
    ({"tokenizer_type": "bpe", "vocab_size": 300}, "vocab_size 54 there, 300 here"),
])
def test_another_runs_checkpoints_are_refused(tmp_path, change, message):
    train(tiny_run_args(tmp_path, max_steps=4))
    args = tiny_run_args(tmp_path, max_steps=8, tokenizer_path=str(tmp_path / "other_tokenizer"), **change)
    with pytest.raises(ValueError, match=f"holds checkpoints of a different model \\({message}"):
        train(args)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]


def test_fresh_deletes_the_old_checkpoints(tmp_path):
    train(tiny_run_args(tmp_path, max_steps=8))
    metrics = train(tiny_run_args(tmp_path, max_steps=4, n_embd=64, fresh="true"))
    assert metrics["global_step"] == 4
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]
    assert json.loads((tmp_path / "run" / "checkpoint-4" / "config.json").read_text())["n_embd"] == 64


# --- surviving disconnects ---------------------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import transformers
from scratchgpt.training.run import main

original = transformers.Trainer.training_step
def training_step(self, *args, **kwargs):
    if self.state.global_step == {at_step}:
        os.kill(os.getpid(), signal.{signal})
    return original(self, *args, **kwargs)
transformers.Trainer.training_step = training_step
main(sys.argv[1:])
"""


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


@pytest.mark.slow  # three training processes, one killed part way
@pytest.mark.parametrize("optim", ["adamw_torch_fused", "muon"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, optim, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(tiny_run_args(tmp_path / "a", dropout=0.1, optim=optim))
    reference = final_weights(tmp_path / "a" / "run")

    args = tiny_run_args(tmp_path / "b", dropout=0.1, optim=optim)
    killed = run_script(KILLER.format(at_step=6, signal="SIGKILL"), args, tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "b" / "run"
    assert (run / "checkpoint-4").is_dir() and not (run / "model.safetensors").exists()
    # a save interrupted half-way by the crash
    (run / "checkpoint-6").mkdir()
    (run / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6')
    caplog.set_level("INFO", logger="scratchgpt")
    metrics = train(args)
    assert metrics["global_step"] == 8
    assert f"resuming from {run / 'checkpoint-4'}" in caplog.text  # a resume, not a fresh start that agrees
    resumed = final_weights(run)
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name  # bitwise on CPU


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])  # a scheduler's stop, and Ctrl-C
def test_a_stop_signal_saves_and_stops_cleanly(tmp_path, signal_name):
    args = tiny_run_args(tmp_path, save_steps=100)
    stopped = run_script(KILLER.format(at_step=3, signal=signal_name), args, tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert f"{signal_name} received" in stopped.stderr and "stopped at step 4" in stopped.stderr
    run = tmp_path / "run"
    assert checkpoint_problem(run / "checkpoint-4") is None and not (run / "model.safetensors").exists()
    assert train(args)["global_step"] == 8


def test_time_budget_saves_and_stops(tmp_path):
    metrics = train(tiny_run_args(tmp_path, time_budget="0s", save_steps=100))
    assert metrics == {"stopped": "time budget", "global_step": 1}
    assert checkpoint_problem(tmp_path / "run" / "checkpoint-1") is None


# --- two processes -----------------------------------------------------------------------------------------------------

RECORDER = """
import json, logging, os, sys
import torch.distributed as dist
import transformers
from scratchgpt.training.run import main

seen = []
original = transformers.Trainer.training_step
def training_step(self, model, inputs, *args, **kwargs):
    seen.append(inputs["input_ids"][:, :8].tolist())
    return original(self, model, inputs, *args, **kwargs)
transformers.Trainer.training_step = training_step
logging.basicConfig(level=logging.INFO)
main(sys.argv[1:])
rank = dist.get_rank() if dist.is_initialized() else 0
world = dist.get_world_size() if dist.is_initialized() else 1
with open(os.path.join(os.environ["RECORD_DIR"], f"rank{rank}.json"), "w") as f:
    json.dump({"world_size": world, "batches": seen}, f)
"""


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # `--cpu --num_processes 2` would silently run one process; this is what gives two gloo processes on a CPU
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"],
}


@pytest.mark.slow  # two launches of two processes each, about 20 s per launcher
@pytest.mark.parametrize("launcher, optim", [("torchrun", "adamw_torch_fused"), ("accelerate", "adamw_torch_fused"),
                                             ("torchrun", "muon")])
def test_two_process_ddp_on_cpu(tmp_path, launcher, optim):
    script = tmp_path / "record.py"  # the launchers run a script file
    script.write_text(RECORDER)
    env = {**os.environ, "RECORD_DIR": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    # every 32-character block holds a whole line with its own number, so equal blocks are the same block
    text = tmp_path / "numbered.txt"
    text.write_text("".join(f"line {i}: {i * i}\n" for i in range(1000)))

    def launch(**overrides):
        args = tiny_run_args(tmp_path, save_steps=2, eval_steps=2, val_fraction=0.2, inputs=str(text), optim=optim,
                             **overrides)
        return subprocess.run([sys.executable, *LAUNCHERS[launcher], str(script), *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=600, env=env)

    result = launch(max_steps=4)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    blocks = [{tuple(row) for batch in r["batches"] for row in batch} for r in records]
    assert blocks[0] and blocks[1] and not blocks[0] & blocks[1]  # the ranks read disjoint data
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in (run / "checkpoint-4").glob("rng_state_*.pth")) == ["rng_state_0.pth",
                                                                                      "rng_state_1.pth"]
    assert checkpoint_problem(run / "checkpoint-4", world_size=2) is None
    # resume under two processes: continue to step 6 from checkpoint-4
    resumed = launch(max_steps=6)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and json.loads((run / "metrics.json").read_text())["global_step"] == 6
    assert json.loads((run / "metrics.json").read_text())["training"]["optimizer"] == optim
    assert not lock_paths(run)[1].exists()  # rank 0 held the run's lock and let it go; no rank waited on it


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def as_two_process_checkpoints(run: Path) -> None:
    """Make the run's checkpoints look saved by two processes (one RNG state per rank), as torchrun leaves them."""
    for checkpoint in run.glob("checkpoint-*"):
        state = checkpoint / "rng_state.pth"
        for rank in (0, 1):
            shutil.copy(state, checkpoint / f"rng_state_{rank}.pth")
        state.unlink()


def test_a_checkpoint_of_another_launch_is_found_and_never_called_interrupted(tmp_path, caplog):
    checkpoint = complete_checkpoint(tmp_path, step=4)
    assert saved_world_size(checkpoint) == 1 and latest_complete_checkpoint(tmp_path, world_size=None) == checkpoint
    caplog.set_level("WARNING", logger="scratchgpt")
    assert latest_complete_checkpoint(tmp_path, world_size=2) is None
    assert "saved by a launch of 1 process, not 2" in caplog.text and "interrupted" not in caplog.text
    two = complete_checkpoint(tmp_path / "b", step=2, world_size=2)
    assert saved_world_size(two) == 2 and latest_complete_checkpoint(tmp_path / "b", world_size=None) == two


def test_a_finished_run_stays_finished_and_another_launch_never_resumes_it(tmp_path, caplog):
    """A run saved by another number of processes: finished, nothing is done; unfinished, one line, nothing
    written (the other direction, a one-process run then torchrun, is the slow test below)."""
    train(tiny_run_args(tmp_path, max_steps=4, save_steps=4, eval_steps=4))
    run = tmp_path / "run"
    as_two_process_checkpoints(run)
    before = folder_hashes(run)
    caplog.set_level("WARNING", logger="scratchgpt")
    assert train(tiny_run_args(tmp_path, max_steps=4, save_steps=4, eval_steps=4))["already_complete"]
    assert "finished run" in caplog.text and "interrupted" not in caplog.text and folder_hashes(run) == before
    with pytest.raises(ValueError, match=r"checkpoint-4: saved by a launch of 2 processes, and this one has 1 "
                                         r"process; resume it with 2 processes as it was started, or start over"):
        train(tiny_run_args(tmp_path, max_steps=8, save_steps=4, eval_steps=4))
    assert folder_hashes(run) == before


@pytest.mark.slow  # three launches, one of two processes
def test_torchrun_after_a_one_process_run_leaves_it_as_it_was(tmp_path):
    """The README's torchrun line after `make demo`: the finished run is not trained again, whatever the launcher;
    an unfinished one is refused in one line; the weights and every file stay as they were."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def torchrun(**overrides):
        return subprocess.run([sys.executable, *LAUNCHERS["torchrun"], str(REPO / "train.py"),
                               *tiny_run_args(tmp_path, save_steps=4, eval_steps=4, **overrides)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)

    train(tiny_run_args(tmp_path, max_steps=4, save_steps=4, eval_steps=4))
    run = tmp_path / "run"
    before = folder_hashes(run)
    finished = torchrun(max_steps=4)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "finished run (step 4 of 4): nothing to do" in finished.stderr and "interrupted" not in finished.stderr
    assert folder_hashes(run) == before
    longer = torchrun(max_steps=8)
    assert longer.returncode == 1 and folder_hashes(run) == before, longer.stderr[-3000:]
    assert "checkpoint-4: saved by a launch of 1 process, and this one has 2 processes" in longer.stderr


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(config):
    # the GPU configs ask for bf16, which TrainingArguments refuses on a machine without one
    cpu_override = [] if torch.cuda.is_available() else ["--bf16", "false"]
    model_args, data_args, run_args, training_args = parse_args([str(config), *cpu_override])
    if config.name.startswith("chat_"):  # fine-tuning: the model comes from the command line
        assert model_args.preset is None and data_args.assistant_only_loss
        assert model_args.use_peft == (config.name == "chat_lora.yaml") and training_args.eval_on_start
        return
    assert model_args.preset in config.name.replace(".yaml", "") or config.name == "tiny.yaml"
    assert training_args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_say_when_to_use_them(config):
    import yaml

    text = config.read_text()
    assert text.startswith("# Use ")
    settings = yaml.safe_load(text)
    assert settings["distributed_type"] in ("MULTI_GPU", "FSDP")
    assert "set it to" in next(line for line in text.splitlines() if line.startswith("num_processes:"))
    if settings["distributed_type"] == "FSDP":
        # transformers' Trainer.save_model writes model.safetensors under FSDP only for a full state dict
        assert settings["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if settings["num_machines"] > 1:
        assert "main_process_ip" in settings and "machine_rank" in settings


def test_sample_generation_is_skipped_when_parameters_are_sharded(monkeypatch):
    from types import SimpleNamespace

    from scratchgpt.training.callbacks import parameters_are_sharded

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not parameters_are_sharded(SimpleNamespace(fsdp=[], deepspeed=None))
    assert parameters_are_sharded(SimpleNamespace(fsdp=["full_shard"], deepspeed=None))
    assert parameters_are_sharded(SimpleNamespace(fsdp=[], deepspeed="ds_config.json"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    assert parameters_are_sharded(SimpleNamespace(fsdp=[], deepspeed=None))


# --- the runtime reality check -----------------------------------------------------------------------------------------


def test_plan_prints_the_runs_figures_and_keeps_only_its_tokenizer_and_data(tmp_path, capsys, caplog):
    from scratchgpt.cli import main as cli

    args = tiny_run_args(tmp_path)  # (written once: a rewritten corpus would make the data stale)
    assert cli(["plan", *args, "--max_steps", "20"]) == 0
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    blocks = json.loads((run / "data" / "scratchgpt_data.json").read_text())["splits"]["train"]["blocks"]
    per_epoch = -(-blocks // 4)  # batches of 4 blocks, the last one short
    assert "reality check (5 steps timed on this machine)" in printed
    assert f"training tokens   {blocks * 32:,} ({blocks:,} blocks of 32)" in printed
    assert "tokens per step   128 (4 blocks x 1 accumulation x 1 process)" in printed
    assert f"steps per epoch   {per_epoch:,}\n" in printed
    assert f"steps in all      20 ({20 / per_epoch:.2f} epochs)" in printed
    assert "5 evaluations besides" in printed and "peak memory" in printed
    # the tokenizer and data are the run's; nothing else is left: no checkpoint, model, metrics or logs
    assert sorted(p.name for p in run.iterdir() if not p.name.endswith(".lock")) == ["data", "tokenizer"]

    caplog.clear()
    with caplog.at_level("INFO", logger="scratchgpt"):
        metrics = train(args)
    assert "is up to date; reusing it" in caplog.text and "reality check (5 steps timed" in caplog.text
    check = metrics["reality_check"]
    assert check["total_steps"] == 8 and check["steps_per_epoch"] == per_epoch and check["evaluations"] == 2
    assert check["estimated_seconds_total"] == pytest.approx(8 * check["seconds_per_step"])
    assert check["seconds_per_step"] > 0 and check["peak_memory_bytes"] > 2**20
    assert json.loads((run / "metrics.json").read_text())["reality_check"] == check

    # a plan of a finished run, even with --fresh true, times a fresh model and leaves the run as it was
    saved = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert cli(["plan", *args, "--fresh", "true"]) == 0
    assert "steps in all      8 " in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")} == saved


def test_the_reality_check_times_steps_not_what_runs_between_them(monkeypatch):
    from types import SimpleNamespace

    from transformers import TrainerControl

    from scratchgpt.training import reality_check

    # step 101, the warm-up, is not timed; then three steps of 2 s, with an evaluation of 38 s between two of them
    clock = iter([10.0, 12.0, 50.0, 52.0, 53.0, 55.0])
    monkeypatch.setattr(reality_check.time, "perf_counter", lambda: next(clock))
    args = SimpleNamespace(device=torch.device("cpu"), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                           world_size=2, eval_strategy="steps", eval_steps=0.25)
    state = SimpleNamespace(global_step=100, max_steps=400, is_world_process_zero=True)
    callback = reality_check.RealityCheckCallback(block_size=64, train_blocks=10_000, timed_steps=3,
                                                  time_budget=100.0)
    control = TrainerControl()
    callback.on_train_begin(args, state, control, train_dataloader=[None] * 625)  # resumed at step 100
    for _ in range(5):
        callback.on_step_begin(args, state, control)
        state.global_step += 1
        callback.on_step_end(args, state, control)
    figures = callback.result
    assert figures["seconds_per_step"] == 2.0 and figures["tokens_per_step"] == 8 * 2 * 2 * 64
    assert figures["steps_per_epoch"] == 313 and figures["epochs"] == pytest.approx(400 / 313)
    assert figures["estimated_seconds_total"] == 800 and figures["estimated_seconds_left"] == 2 * (400 - 104)
    assert figures["evaluations"] == 4 and not control.should_training_stop
    text = callback.describe()
    assert "time left         ~9 min 52 s (resumed at step 100)" in text
    assert "time_budget       1 min 40 s: about 6 sessions" in text


@pytest.mark.parametrize("seconds, text", [(3.24, "3.2 s"), (245, "4 min 05 s"), (7620, "2 h 07 min"),
                                           (3 * 86400 + 4 * 3600, "3 d 04 h")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    from scratchgpt.training.reality_check import format_duration

    assert format_duration(seconds) == text
