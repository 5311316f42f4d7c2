"""push_to_hub.py against a Hub-compatible server on 127.0.0.1 (tests/hub_server.py): the real huggingface_hub and
transformers client code uploads a trained model and downloads it back by repo id."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt.hub import model_card, push_folder, select_files
from scratchgpt.training.run import main as train

from .hub_server import HubServer
from .test_training import tiny_run_args
from .testing_utils import hub_client_env

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_token_that_must_never_be_printed"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    train(tiny_run_args(folder))
    return folder / "run"


@pytest.fixture
def hub():
    server = HubServer().start()
    yield server
    server.stop()


def test_push_then_load_by_repo_id(trained, hub, tmp_path):
    env = hub_client_env(hub, tmp_path, HF_TOKEN=TOKEN)
    pushed = subprocess.run([sys.executable, str(REPO / "push_to_hub.py"), str(trained), "me/tiny-chat"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert TOKEN not in pushed.stdout + pushed.stderr
    assert hub.tokens_seen == {TOKEN}
    files = hub.repos["me/tiny-chat"].files
    assert {"model.safetensors", "config.json", "modeling_scratchgpt.py", "configuration_scratchgpt.py",
            "tokenizer.json", "generation_config.json", "README.md", "training_curves.png", "metrics.json"} <= set(files)
    assert not [name for name in files if name.startswith("checkpoint") or name.endswith((".pt", ".pth", ".bin"))]
    assert sum(1 for method, path in hub.requests if "/commit/" in path) == 1  # one commit

    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    torch.save({"ids": ids}, tmp_path / "ids.pt")
    check = textwrap.dedent(f"""
        import sys, torch
        if sys.argv[1] == "without":
            sys.modules["scratchgpt"] = None  # scratchgpt cannot be imported: remote code must do it all
        else:
            import scratchgpt
        from transformers import AutoModelForCausalLM, AutoTokenizer
        remote = sys.argv[1] == "without"
        model = AutoModelForCausalLM.from_pretrained("me/tiny-chat", trust_remote_code=remote).eval()
        tokenizer = AutoTokenizer.from_pretrained("me/tiny-chat", trust_remote_code=remote)
        assert type(model).__module__.startswith("transformers_modules") == remote, type(model).__module__
        ids = torch.load({str(tmp_path / "ids.pt")!r})["ids"]
        torch.save(model(ids).logits, {str(tmp_path)!r} + "/logits_" + sys.argv[1] + ".pt")
        chat = [{{"role": "user", "content": "hi"}}, {{"role": "assistant", "content": "hello"}}]
        with open({str(tmp_path)!r} + "/chat_" + sys.argv[1] + ".txt", "w") as out:
            out.write(tokenizer.apply_chat_template(chat, tokenize=False))
    """)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoModelForCausalLM.from_pretrained(trained).eval()
    with torch.no_grad():
        expected = original(ids).logits
    for mode in ("with", "without"):
        loaded = subprocess.run([sys.executable, "-c", check, mode], env=hub_client_env(hub, tmp_path / mode),
                                capture_output=True, text=True, timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        torch.testing.assert_close(torch.load(tmp_path / f"logits_{mode}.pt"), expected, atol=0, rtol=0)
        # the chat template (tokenizer_config.json and chat_template.jinja) survives upload and download
        local = AutoTokenizer.from_pretrained(trained).apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False)
        assert (tmp_path / f"chat_{mode}.txt").read_text() == local and "<|assistant|>" in local


def test_dry_run_lists_files_and_card_without_a_token(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = push_folder(trained, "me/tiny", dry_run=True)
    names = [name for name, _ in result["files"]]
    assert "README.md" in names and "model.safetensors" in names
    assert not [n for n in names if n in ("training_args.bin", "optimizer.pt", "rng_state.pth")]
    card = result["card"]
    assert card.startswith("---\n") and "library_name: transformers" in card and "pipeline_tag: text-generation" in card
    assert "model-index:" in card and "type: perplexity" in card
    for section in ("## Model", "## Training", "## Evaluation", "## Use", "## Limitations", "training_curves.png",
                    "trust_remote_code=True", "| layers | 1 |", "| context | 32 tokens |"):
        assert section in card, section


def test_checkpoint_folders_publish_too_and_extras_are_opt_in(trained):
    checkpoint = trained / "checkpoint-8"
    default = {p.name for p in select_files(checkpoint)}
    assert "model.safetensors" in default and "optimizer.pt" not in default and "rng_state.pth" not in default
    assert "optimizer.pt" in {p.name for p in select_files(checkpoint, include=["optimizer.pt"])}
    assert "## Model" in model_card(checkpoint, "me/tiny")


@pytest.mark.parametrize("args, env_token, message", [
    (["me/tiny"], None, "no Hugging Face token"),
    (["not a repo id!"], TOKEN, "invalid repo id 'not a repo id!'"),
    (["just-a-name"], TOKEN, "include the namespace"),
])
def test_clear_errors(trained, hub, tmp_path, args, env_token, message):
    env = hub_client_env(hub, tmp_path, **({"HF_TOKEN": env_token} if env_token else {}))
    result = subprocess.run([sys.executable, str(REPO / "push_to_hub.py"), str(trained), *args], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not hub.repos


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trained model folder"):
        push_folder(tmp_path, "me/tiny", token=TOKEN)


def test_network_failure_after_retries(trained, tmp_path, monkeypatch):
    monkeypatch.setattr("scratchgpt.hub.time.sleep", lambda seconds: None)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConnectionError, match="could not upload to me/tiny after 3 attempts"):
        push_folder(trained, "me/tiny", token=TOKEN)


def copy_model(trained, folder: Path) -> Path:
    import shutil

    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    return folder


def test_a_symlink_out_of_the_folder_is_never_followed(trained, tmp_path, capsys):
    folder = copy_model(trained, tmp_path / "model")
    (tmp_path / "secret.txt").write_text("not for the Hub")
    (folder / "merges.txt").symlink_to(tmp_path / "secret.txt")  # an allow-listed name
    with pytest.raises(ValueError, match=r"merges.txt: a symbolic link to .*secret.txt, outside .*model; refusing"):
        push_folder(folder, "me/tiny", dry_run=True)
    (folder / "merges.txt").unlink()
    (folder / "merges.txt").symlink_to(folder / "tokenizer.json")  # a link inside the folder is fine
    assert "merges.txt" in {name for name, _ in push_folder(folder, "me/tiny", dry_run=True)["files"]}


def test_secrets_stay_home_unless_asked_for_twice(trained, tmp_path):
    folder = copy_model(trained, tmp_path / "model")
    for name in (".env", "hf_token", "id_rsa", ".gitconfig", "server.pem", "notes.txt"):
        (folder / name).write_text("x")
    names = {p.name for p in select_files(folder, include=["*"])}
    assert "notes.txt" in names and "tokenizer.json" in names and "tokenizer_config.json" in names
    assert not names & {".env", "hf_token", "id_rsa", ".gitconfig", "server.pem"}
    everything = {p.name for p in select_files(folder, include=["*"], include_sensitive=True)}
    assert {".env", "hf_token", "id_rsa", ".gitconfig", "server.pem"} <= everything
    result = subprocess.run([sys.executable, str(REPO / "push_to_hub.py"), str(folder), "me/tiny", "--dry-run",
                             "--include", "*"], capture_output=True, text=True, env={**os.environ,
                                                                                     "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "notes.txt" in result.stdout and "hf_token" not in result.stdout


MODEL_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
               "generation_config.json", "modeling_scratchgpt.py", "metrics.json"]
PRIVATE_FILES = ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                 ".scratchgpt.lock", "notes.txt", "events.out.tfevents.1"]
SECRET_FILES = [".env", ".env.local", "hf_token", "HF_TOKEN.txt", "id_rsa", "id_ed25519.pub", ".git-credentials",
                "server.pem", "tls.key", ".netrc"]


@settings(max_examples=40, deadline=None)
@given(present=st.sets(st.sampled_from(MODEL_FILES + PRIVATE_FILES + SECRET_FILES), min_size=1),
       include=st.sampled_from([[], ["*"], ["*.pt"], ["notes.txt", ".env"]]), sensitive=st.booleans())
def test_what_is_published_follows_the_allow_list(tmp_path_factory, present, include, sensitive):
    """For any folder: every model file is published; training state and other files only when included; what
    looks like a secret only when included and asked for with include_sensitive."""
    import fnmatch

    folder = tmp_path_factory.mktemp("folder")
    for name in present:
        (folder / name).write_text("x")
    published = {p.name for p in select_files(folder, include=include, include_sensitive=sensitive)}
    included = {name for name in present if any(fnmatch.fnmatch(name, pattern) for pattern in include)}
    assert published >= present & set(MODEL_FILES)
    assert published & set(PRIVATE_FILES) == included & set(PRIVATE_FILES)
    assert published & set(SECRET_FILES) == (included & set(SECRET_FILES) if sensitive else set())
