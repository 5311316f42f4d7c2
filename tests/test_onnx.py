"""ONNX export (`scratchgpt convert to-onnx`), checked by transformers.js itself running the folder in node."""

import json
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.cli import main as cli
from scratchgpt.cli import save_model_folder
from scratchgpt.hub import push_folder
from scratchgpt.modeling.onnx_export import ONNX_FILE

from .testing_utils import TRANSFORMERS_JS, tiny_config, tiny_tokenizer

onnx = pytest.importorskip("onnx", reason='ONNX export needs the onnx package: pip install -e ".[onnx]"')

PROMPTS = ["The quick brown fox", "Hello world! How", "I am"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "How are you?"}]
HELD_OUT = "Language models predict the next token from the ones before it."

# transformers.js in node: the folder's tokenizer and model as a web page would load them (no Hub, local files)
RUN_TRANSFORMERS_JS = """
import { readFileSync } from "node:fs";
import path from "node:path";
const [,, library, folder, requestPath] = process.argv;
const { AutoTokenizer, AutoModelForCausalLM, env } = await import(library);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(folder) + "/";
const name = path.basename(folder);
const request = JSON.parse(readFileSync(requestPath, "utf8"));
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForCausalLM.from_pretrained(name);
const result = { greedy: [] };
for (const prompt of request.prompts) {
  const out = await model.generate({ ...tokenizer(prompt), max_new_tokens: request.max_new_tokens, do_sample: false });
  result.greedy.push(Array.from(out.data, Number));
}
result.chat = tokenizer.apply_chat_template(request.messages, { tokenize: false, add_generation_prompt: true });
result.logits = (await model(tokenizer(request.held_out))).logits.tolist()[0];
console.log(JSON.stringify(result));
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A chat tokenizer and a model (64 wide, 4 heads, context 64) saved, then `scratchgpt convert to-onnx`."""
    root = tmp_path_factory.mktemp("onnx")
    tokenizer = tiny_tokenizer()
    model = ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), n_embd=64, n_inner=128)).eval()
    with torch.no_grad():  # LayerNorms away from 1 / 0, so that a mistake in them shows
        for name, param in model.named_parameters():
            if "ln" in name:
                param.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.2)
    save_model_folder(model, str(root / "model"), tokenizer)
    assert cli(["convert", "to-onnx", str(root / "model"), str(root / "web")]) == 0
    return model, tokenizer, root / "web"


def test_the_folder_has_what_transformers_js_reads(exported):
    """The graph's names and shapes as transformers.js reads them, and the GPT-2 weights beside it for transformers
    (the same logits); the whole folder is what push_to_hub publishes."""
    model, tokenizer, folder = exported
    ids = tokenizer(HELD_OUT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits, model(ids).logits)
    published = {name for name, _ in push_folder(folder, "me/web", dry_run=True)["files"]}
    assert published == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                         "tokenizer_config.json", "chat_template.jinja", "onnx/model.onnx", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["transformers.js_config"] == {"dtype": "fp32"}
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 4, 64)
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == tokenizer.chat_template
    graph = onnx.load(folder / ONNX_FILE).graph
    onnx.checker.check_model(onnx.load(folder / ONNX_FILE))
    shapes = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*graph.input, *graph.output]}
    assert shapes["input_ids"] == ["batch_size", "sequence_length"]
    assert shapes["attention_mask"] == ["batch_size", "total_sequence_length"]
    # named dimensions start at 0 in transformers.js' first step; heads and head width must be numbers
    assert shapes["past_key_values.1.value"] == ["batch_size", 4, "past_sequence_length", 16]
    assert shapes["present.0.key"] == ["batch_size", 4, "past_sequence_length + sequence_length", 16]
    assert shapes["logits"] == ["batch_size", "sequence_length", len(tokenizer)]
    assert [value.name for value in graph.input][3:5] == ["past_key_values.0.key", "past_key_values.0.value"]


def test_to_onnx_refuses_a_model_without_its_tokenizer(tmp_path, capsys):
    ScratchGPTForCausalLM(tiny_config()).save_pretrained(tmp_path / "bare")
    assert cli(["convert", "to-onnx", str(tmp_path / "bare"), str(tmp_path / "web")]) == 1
    assert "no tokenizer beside the model" in capsys.readouterr().err and not (tmp_path / "web").exists()


@pytest.mark.transformersjs
def test_transformers_js_generates_and_chats_as_transformers(exported, tmp_path):
    """transformers.js 4.3 in node on the exported folder: the greedy tokens of three prompts, the chat prompt and
    every position's logits on held-out text equal transformers' on the saved model."""
    model, tokenizer, folder = exported
    (tmp_path / "run.mjs").write_text(RUN_TRANSFORMERS_JS)
    (tmp_path / "request.json").write_text(json.dumps({"prompts": PROMPTS, "max_new_tokens": 16, "messages": CHAT,
                                                       "held_out": HELD_OUT}))
    library = (TRANSFORMERS_JS / "dist" / "transformers.node.mjs").as_uri()
    result = subprocess.run([shutil.which("node"), str(tmp_path / "run.mjs"), library, str(folder),
                             str(tmp_path / "request.json")], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        for prompt, greedy in zip(PROMPTS, answer["greedy"], strict=True):
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            assert greedy == model.generate(ids, max_new_tokens=16, do_sample=False)[0].tolist(), prompt
        logits = model(tokenizer(HELD_OUT, return_tensors="pt").input_ids).logits[0]
    assert answer["chat"] == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    torch.testing.assert_close(torch.tensor(answer["logits"]), logits, atol=1e-5, rtol=1e-5)
