"""Fine-tuning with train.py: from a trained model, LoRA through PEFT, assistant-only loss, replay."""

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from scratchgpt.data.sources import chitchat_conversations
from scratchgpt.training.arguments import ModelArguments
from scratchgpt.training.checkpoints import checkpoint_problem
from scratchgpt.training.finetuning import lora_settings, mix_replay
from scratchgpt.training.run import main as train

from .test_training import KILLER, run_script, tiny_run_args, without_sizes
from .testing_utils import tiny_config

pytestmark = pytest.mark.peft


def chats(folder: Path, n: int = 200) -> str:
    path = folder / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n"
                            for c in itertools.islice(chitchat_conversations(), n)))
    return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny model pretrained for a few steps on chat text (character tokenizer, context 32)."""
    folder = tmp_path_factory.mktemp("base")
    train(tiny_run_args(folder, inputs=chats(folder), max_steps=6, save_steps=100, eval_steps=100))
    return folder / "run"


def lora_args(tmp_path: Path, base: Path, **overrides) -> list[str]:
    settings = {"inputs": chats(tmp_path), "model_name_or_path": str(base), "use_peft": "true",
                "assistant_only_loss": "true", "learning_rate": 1e-2, "lora_r": 4, "lora_alpha": 8,
                "lora_dropout": 0.0}
    sizes = {key: overrides.pop(key) for key in list(overrides) if key in ("n_layer", "preset")}
    return without_sizes(tiny_run_args(tmp_path, **{**settings, **overrides})) + \
        [token for key, value in sizes.items() for token in (f"--{key}", str(value))]


def hashes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_lora_run_saves_an_adapter_and_a_merged_model(tmp_path, base):
    from peft import AutoPeftModelForCausalLM, PeftModel

    base_files = hashes(base)
    metrics = train(lora_args(tmp_path, base))
    run = tmp_path / "run"
    assert hashes(base) == base_files  # the base folder is only read
    assert metrics["training"]["lora"]["target_modules"] == ["qkv", "out_proj", "fc_in", "fc_out"]
    assert metrics["training"]["assistant_only_loss"] is True
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run / "checkpoint-8" / "model.safetensors").exists()  # checkpoints hold the adapter only
    assert checkpoint_problem(run / "checkpoint-8") is None  # ... and are complete checkpoints to resume from

    # the merged model equals the base + adapter, both loaded the way users load them
    merged = AutoModelForCausalLM.from_pretrained(run).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "adapter").eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(run / "adapter").eval()  # finds the base by its recorded path
    ids = torch.randint(0, merged.config.vocab_size, (2, 32))
    with torch.no_grad():
        expected = adapted(ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(auto(ids).logits, expected, atol=0, rtol=0)
        assert (AutoModelForCausalLM.from_pretrained(base)(ids).logits - expected).abs().max() > 1e-3  # it learned

    # base weights untouched by training: every weight LoRA does not target is bitwise the base's, and each target
    # is the base's plus exactly the adapter's B @ A * alpha / r
    before, after = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    targets = 0
    for name, weight in before.items():
        a_name = "base_model.model." + name.replace(".weight", ".lora_A.weight")
        if a_name in adapter:
            delta = adapter[a_name.replace("lora_A", "lora_B")] @ adapter[a_name] * (8 / 4)
            torch.testing.assert_close(after[name], weight + delta, atol=1e-6, rtol=0)
            targets += 1
        else:
            assert torch.equal(after[name], weight), name
    assert targets == 4 * 1  # four Linear layers in the one block


def test_the_merged_model_loads_with_remote_code_where_scratchgpt_is_not_importable(tmp_path, base):
    train(lora_args(tmp_path, base, max_steps=2, save_steps=100, eval_steps=100))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run").eval()
    ids = torch.randint(0, merged.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": merged(ids).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["scratchgpt"] = None  # any `import scratchgpt` now raises ImportError
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "run")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], atol=0, rtol=0)
        print("merged-remote-code-ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "merged-remote-code-ok" in result.stdout


def test_assistant_only_loss_trains_on_assistant_tokens_only(tmp_path, base):
    """The run's validation loss is the mean over assistant tokens alone: recomputed directly from the saved model
    and the prepared blocks' masks (the Trainer averages the loss of each evaluation batch of 8 blocks)."""
    from scratchgpt.data.prepare import collate_blocks, load_prepared

    metrics = train(lora_args(tmp_path, base, max_steps=2, save_steps=100, eval_steps=100))
    validation = load_prepared(tmp_path / "run" / "data")["validation"].select(range(16))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run").eval()
    losses = []
    for start in (0, 8):
        batch = collate_blocks([validation[i] for i in range(start, start + 8)])
        assert (batch["labels"] == -100).float().mean() > 0.3  # user turns, role markers and <|endoftext|>
        with torch.no_grad():
            logits = model(batch["input_ids"]).logits[:, :-1]
        losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:],
                                                        ignore_index=-100).item())
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)
    trained = json.loads((tmp_path / "run" / "data" / "scratchgpt_data.json").read_text())["splits"]["train"]
    assert 0 < trained["trained_tokens"] < trained["blocks"] * 32


def test_replay_mixes_the_asked_fraction_seeded(tmp_path):
    train_blocks = Dataset.from_dict({"input_ids": [[1] * 4] * 80, "assistant_masks": [[True, False] * 2] * 80})
    replay_blocks = Dataset.from_dict({"input_ids": [[i + 10] * 4 for i in range(7)]})
    mixed = mix_replay(train_blocks, replay_blocks, 0.2, seed=3)
    assert len(mixed) == 100 and sum(row["input_ids"][0] != 1 for row in mixed) == 20  # 20% replay
    replayed = [row for row in mixed if row["input_ids"][0] != 1]
    assert all(row["assistant_masks"] == [True] * 4 for row in replayed)  # pretraining text: every token trained
    assert {row["input_ids"][0] for row in replayed} == set(range(10, 17))  # cycled through all 7
    again = mix_replay(train_blocks, replay_blocks, 0.2, seed=3)
    assert again["input_ids"] == mixed["input_ids"]
    assert mix_replay(train_blocks, replay_blocks, 0.2, seed=4)["input_ids"] != mixed["input_ids"]


@settings(max_examples=30, deadline=None)
@given(n_train=st.integers(1, 60), n_replay=st.integers(1, 20), fraction=st.floats(0.01, 0.9))
def test_replay_keeps_every_fine_tuning_block_and_spreads_over_the_replay_set(n_train, n_replay, fraction):
    """Any sizes: every fine-tuning block is kept once; the replay share is the nearest whole number of blocks to
    the asked fraction; replay blocks are drawn evenly (used n or n+1 times, never one block many times over)."""
    train_blocks = Dataset.from_dict({"input_ids": [[i] * 2 for i in range(n_train)]})
    replay_blocks = Dataset.from_dict({"input_ids": [[1000 + i] * 2 for i in range(n_replay)]})
    mixed = [row[0] for row in mix_replay(train_blocks, replay_blocks, fraction, seed=0)["input_ids"]]
    assert mixed[:n_train] == list(range(n_train))
    replayed = mixed[n_train:]
    assert len(replayed) == round(n_train * fraction / (1 - fraction))
    uses = [replayed.count(1000 + i) for i in range(n_replay)]
    assert set(replayed) <= {1000 + i for i in range(n_replay)} and max(uses) - min(uses) <= 1


def test_a_run_with_replay_records_it(tmp_path, base):
    metrics = train(lora_args(tmp_path, base, replay_inputs=str(base / "data"), replay_fraction=0.25, max_steps=2,
                              save_steps=100, eval_steps=100))
    assert metrics["training"]["replay"] == {"inputs": ["data"], "fraction": 0.25}
    card = (tmp_path / "run" / "metrics.json").read_text()
    assert '"fraction": 0.25' in card


@pytest.mark.parametrize("overrides, message", [
    ({"lora_target_modules": "attn_proj"},
     "lora_target_modules: attn_proj match no Linear layer of the model; available: fc_in, fc_out, lm_head, "
     "out_proj, qkv"),
    ({"model_name_or_path": "no/such-folder-here"}, "no/such-folder-here"),
    ({"n_layer": 3}, "n_layer 3 here, 1 in the model"),
    ({"replay_fraction": 0.2}, "replay_inputs and replay_fraction go together"),
    ({"assistant_only_loss": "true", "inputs": "PLAIN"}, "plain text, but assistant_only_loss needs conversations"),
])
def test_bad_fine_tuning_settings_are_one_line_errors_and_write_nothing(tmp_path, base, overrides, message):
    if overrides.get("inputs") == "PLAIN":
        (tmp_path / "plain.txt").write_text("Just some text.\n" * 50)
        overrides = {**overrides, "inputs": str(tmp_path / "plain.txt")}
    args = lora_args(tmp_path, base, **overrides)
    with pytest.raises((ValueError, OSError), match=message.replace("(", r"\(")):
        train(args)
    assert not (tmp_path / "run").exists() or [p.name for p in (tmp_path / "run").iterdir()] == [".scratchgpt.lock"]


@settings(max_examples=10, deadline=None)
@given(r=st.integers(1, 16), alpha=st.integers(1, 64), dropout=st.floats(0, 0.9),
       targets=st.sampled_from([["qkv"], ["fc_in", "fc_out"], ["qkv", "out_proj", "fc_in", "fc_out"]]))
def test_the_adapter_has_the_runs_lora_settings(r, alpha, dropout, targets):
    """What the run's keys say is what PEFT builds (and saves in adapter_config.json): rank, alpha, dropout, targets,
    and only the adapters are trained."""
    from scratchgpt.training.finetuning import apply_lora

    model = AutoModelForCausalLM.from_config(tiny_config())
    adapted = apply_lora(model, ModelArguments(use_peft=True, lora_r=r, lora_alpha=alpha, lora_dropout=dropout,
                                               lora_target_modules=targets))
    config = adapted.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, set(config.target_modules)) == (r, alpha, dropout,
                                                                                               set(targets))
    layers = [m for name, m in adapted.named_modules() if hasattr(m, "lora_A") and name.split(".")[-1] in targets]
    assert len(layers) == 2 * len(targets)  # every target in both blocks
    assert all(layer.lora_dropout["default"].p == dropout if dropout else True for layer in layers)
    trained = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)


def test_lora_on_a_tied_head_is_refused():
    tied = AutoModelForCausalLM.from_config(tiny_config(tie_word_embeddings=True))
    for keys in ({"lora_target_modules": ["qkv", "lm_head"]}, {"lora_modules_to_save": ["lm_head"]}):
        with pytest.raises(ValueError, match="lm_head is tied to its input embedding"):
            lora_settings(tied, ModelArguments(use_peft=True, **keys))
    untied = AutoModelForCausalLM.from_config(tiny_config(tie_word_embeddings=False))
    assert lora_settings(untied, ModelArguments(lora_target_modules=["qkv", "lm_head"]))["target_modules"] == \
        ["qkv", "lm_head"]
    assert lora_settings(tied, ModelArguments(lora_target_modules=["all-linear"]))["target_modules"] == "all-linear"


@pytest.mark.slow  # three training processes, one killed part way
def test_sigkill_then_rerun_equals_an_uninterrupted_lora_run(tmp_path, base, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(lora_args(tmp_path / "a", base, lora_dropout=0.1))
    reference = load_file(tmp_path / "a" / "run" / "adapter" / "adapter_model.safetensors")
    args = lora_args(tmp_path / "b", base, lora_dropout=0.1)
    killed = run_script(KILLER.format(at_step=6, signal="SIGKILL"), args, tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "b" / "run"
    assert (run / "checkpoint-4" / "adapter_model.safetensors").is_file() and not (run / "adapter").exists()
    with caplog.at_level("INFO", logger="scratchgpt"):
        assert train(args)["global_step"] == 8
    # a restart from step 0 would give the same adapter bitwise: the log tells a resume from a fresh start
    assert f"resuming from {run / 'checkpoint-4'}" in caplog.text
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name  # bitwise on CPU
    np.testing.assert_array_equal(load_file(run / "model.safetensors")["model.layers.0.attn.qkv.weight"].numpy(),
                                  load_file(tmp_path / "a" / "run" / "model.safetensors")
                                  ["model.layers.0.attn.qkv.weight"].numpy())


def test_an_adapter_publishes_naming_its_base_and_loads_from_the_hub(tmp_path, base):
    from peft import PeftModel

    from scratchgpt.hub import push_folder

    from .hub_server import HubServer
    from .test_hub import REPO, TOKEN
    from .testing_utils import hub_client_env

    train(lora_args(tmp_path, base, max_steps=2, save_steps=100, eval_steps=100))
    adapter = tmp_path / "run" / "adapter"
    with pytest.raises(ValueError, match="the adapter's base is the local folder run; publish that model first"):
        push_folder(adapter, "me/chat-lora", dry_run=True)
    dry = push_folder(adapter, "me/chat-lora", dry_run=True, base_model="me/base")
    assert "base_model: me/base" in dry["card"] and "library_name: peft" in dry["card"]
    assert "Fine-tuned from run: LoRA rank 4 (alpha 8) on qkv, out_proj, fc_in, fc_out;" in dry["card"]
    assert str(tmp_path) not in dry["card"]

    hub = HubServer().start()
    try:
        env = hub_client_env(hub, tmp_path, HF_TOKEN=TOKEN)
        for folder, repo, extra in ((base, "me/base", []), (adapter, "me/chat-lora", ["--base-model", "me/base"])):
            pushed = subprocess.run([sys.executable, str(REPO / "push_to_hub.py"), str(folder), repo, *extra],
                                    env=env, capture_output=True, text=True, timeout=300)
            assert pushed.returncode == 0, pushed.stderr[-3000:]
        config = json.loads(hub.repos["me/chat-lora"].files["adapter_config.json"])
        assert config["base_model_name_or_path"] == "me/base"  # not the local path
        assert "model.safetensors" not in hub.repos["me/chat-lora"].files

        ids = torch.randint(0, 40, (1, 12))
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
        with torch.no_grad():
            torch.save({"ids": ids, "logits": adapted(ids).logits}, tmp_path / "expected.pt")
        script = textwrap.dedent(f"""
            import torch
            from peft import AutoPeftModelForCausalLM
            model = AutoPeftModelForCausalLM.from_pretrained("me/chat-lora", trust_remote_code=True).eval()
            expected = torch.load({str(tmp_path / "expected.pt")!r})
            torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], atol=0, rtol=0)
            print("adapter-from-hub-ok")
        """)
        loaded = subprocess.run([sys.executable, "-c", script], env=hub_client_env(hub, tmp_path / "client"),
                                capture_output=True, text=True, timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert "adapter-from-hub-ok" in loaded.stdout
    finally:
        hub.stop()


def test_dropout_given_for_a_fine_tuning_run_replaces_the_base_models(tmp_path, base):
    assert json.loads((base / "config.json").read_text())["resid_pdrop"] == 0.0
    (tmp_path / "a").mkdir()
    train(lora_args(tmp_path / "a", base, dropout=0.1, use_peft="false", max_steps=1, save_steps=100,
                    eval_steps=100))
    config = json.loads((tmp_path / "a" / "run" / "config.json").read_text())
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "run")
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    (tmp_path / "b").mkdir()
    train(lora_args(tmp_path / "b", base, use_peft="false", max_steps=1, save_steps=100, eval_steps=100))
    assert json.loads((tmp_path / "b" / "run" / "config.json").read_text())["resid_pdrop"] == 0.0  # the base's


@pytest.mark.slow  # two launches of two processes
def test_lora_with_assistant_only_loss_under_two_process_ddp(tmp_path, base):
    from peft import PeftModel

    from .test_training import LAUNCHERS, REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def launch(**overrides):
        args = lora_args(tmp_path, base, save_steps=2, eval_steps=2, **overrides)
        return subprocess.run([sys.executable, *LAUNCHERS["torchrun"], str(REPO / "train.py"), *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)

    first = launch(max_steps=4)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoint-4").glob("rng_state_*.pth")) == ["rng_state_0.pth",
                                                                                      "rng_state_1.pth"]
    resumed = launch(max_steps=6)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and json.loads((run / "metrics.json").read_text())["global_step"] == 6
    merged = AutoModelForCausalLM.from_pretrained(run).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "adapter").eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=0)
