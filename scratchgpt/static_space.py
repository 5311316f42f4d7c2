"""A static Hugging Face Space that chats with a model in the visitor's browser: no server, no GPU, no cost.

The page loads transformers.js and the model's ``scratchgpt convert to-onnx`` export (published as a model repo)
and generates on the visitor's own CPU (WebAssembly). A model with a chat template chats (its messages through the
template, each reply stopped at the end-of-turn token by the generation config); one without continues the typed
text. The prompt is cut from the left so that prompt and reply fit the model's context, as ``scratchgpt chat`` does.

``space_files`` takes where the library, the models and ONNX Runtime's WebAssembly files come from, so that the
same page runs against local copies in the tests; a Space uses the defaults (jsDelivr and the Hub).
"""

import html
import json

__all__ = ["TRANSFORMERS_JS", "space_files"]

TRANSFORMERS_JS = "https://cdn.jsdelivr.net/npm/@huggingface/transformers@4.3.2"

_CARD = """---
title: {title}
emoji: 💬
colorFrom: indigo
colorTo: gray
sdk: static
pinned: false
models:
- {model}
tags:
- scratchgpt
- transformers.js
---

[{model}](https://huggingface.co/{model}) running in your browser with transformers.js (nothing is sent to
a server). Made with scratchgpt's `push_to_hub.py --static-space`.
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
  #transcript p {{ white-space: pre-wrap; margin: 0.6rem 0; padding: 0.5rem 0.7rem; border-radius: 0.5rem; }}
  #transcript .user {{ background: #eef; }}
  #transcript .assistant {{ background: #f4f4f4; }}
  #status {{ color: #666; }}
  form {{ display: grid; gap: 0.5rem; }}
  textarea {{ width: 100%; font: inherit; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p id="status">Loading {model_text} into this page ...</p>
<div id="transcript"></div>
<form id="form">
  <textarea id="message" rows="3" placeholder="Write a message; Enter sends it" disabled></textarea>
  <div>
    <button id="send" type="submit" disabled>Send</button>
    <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.8"></label>
    <label>top-k <input id="top-k" type="number" min="0" step="1" value="50"></label>
    <label>max new tokens <input id="max-new-tokens" type="number" min="1" step="1" value="64"></label>
  </div>
</form>
<script type="module">
import {{ AutoModelForCausalLM, AutoTokenizer, TextStreamer, env }} from {library};

const MODEL = {model};
env.remoteHost = {hub};
env.allowLocalModels = false;
const wasmPaths = {wasm};
if (wasmPaths) env.backends.onnx.wasm.wasmPaths = wasmPaths;

const status = document.getElementById("status");
const transcript = document.getElementById("transcript");
const message = document.getElementById("message");
const send = document.getElementById("send");
const number = (id) => Number(document.getElementById(id).value);

function bubble(role, text) {{
  const p = document.createElement("p");
  p.className = role;
  p.textContent = text;
  transcript.appendChild(p);
  return p;
}}

let tokenizer, model, context;
try {{
  tokenizer = await AutoTokenizer.from_pretrained(MODEL);
  model = await AutoModelForCausalLM.from_pretrained(MODEL);
  context = model.config.n_positions;
}} catch (error) {{
  status.textContent = `Could not load ${{MODEL}}: ${{error.message}}`;
  throw error;
}}
const chat = Boolean(tokenizer.chat_template);
const mode = chat ? "chat" : "it continues your text";
status.textContent = `${{MODEL}} runs in this page (${{mode}}; context ${{context}} tokens).`;
message.disabled = send.disabled = false;
document.getElementById("max-new-tokens").max = context - 1;
const messages = [];

async function reply(text) {{
  messages.push({{ role: "user", content: text }});
  bubble("user", text);
  const inputs = chat
    ? tokenizer.apply_chat_template(messages, {{ add_generation_prompt: true, return_dict: true }})
    : tokenizer(text);
  const maxNewTokens = Math.min(number("max-new-tokens"), context - 1);
  const keep = context - maxNewTokens;  // the prompt's newest tokens that fit beside the reply
  const length = inputs.input_ids.dims[1];
  const prompt = length <= keep ? inputs : {{
    input_ids: inputs.input_ids.slice(null, [length - keep, length]),
    attention_mask: inputs.attention_mask.slice(null, [length - keep, length]),
  }};
  const shown = bubble("assistant", "");
  const temperature = number("temperature");
  const streamer = new TextStreamer(tokenizer, {{
    skip_prompt: true, skip_special_tokens: true, callback_function: (piece) => {{ shown.textContent += piece; }},
  }});
  const output = await model.generate({{
    ...prompt, max_new_tokens: maxNewTokens, do_sample: temperature > 0, temperature: temperature || 1,
    top_k: number("top-k"), streamer,
  }});
  const promptLength = prompt.input_ids.dims[1];
  const [answer] = tokenizer.batch_decode(output.slice(null, [promptLength, null]), {{ skip_special_tokens: true }});
  shown.textContent = answer.trim();
  shown.dataset.done = "true";
  messages.push({{ role: "assistant", content: answer.trim() }});
}}

document.getElementById("form").addEventListener("submit", async (event) => {{
  event.preventDefault();
  const text = message.value.trim();
  if (!text) return;
  message.value = "";
  message.disabled = send.disabled = true;
  try {{
    await reply(text);
  }} catch (error) {{
    bubble("assistant", `(error: ${{error.message}})`);
  }} finally {{
    message.disabled = send.disabled = false;
    message.focus();
  }}
}});
message.addEventListener("keydown", (event) => {{
  if (event.key === "Enter" && !event.shiftKey) {{
    event.preventDefault();
    document.getElementById("form").requestSubmit();
  }}
}});
</script>
</body>
</html>
"""


def space_files(model: str, title: str | None = None, library: str = TRANSFORMERS_JS,
                hub: str = "https://huggingface.co/", wasm: dict[str, str] | None = None) -> dict[str, bytes]:
    """``README.md`` (the Space's card: ``sdk: static``) and ``index.html`` for a static Space chatting with
    ``model`` (a Hub id of a ``convert to-onnx`` export). ``library``: transformers.js' URL; ``hub``: where model
    files are fetched (``{hub}{model}/resolve/main/...``); ``wasm``: ONNX Runtime's ``{"mjs": URL, "wasm": URL}``
    (default: transformers.js' own choice, jsDelivr)."""
    title = title or model.split("/")[-1]
    page = _PAGE.format(title=html.escape(title), model_text=html.escape(model), library=json.dumps(library),
                        model=json.dumps(model), hub=json.dumps(hub), wasm=json.dumps(wasm))
    card = _CARD.format(title=json.dumps(title), model=model)  # a JSON string is a YAML string, colons and all
    return {"README.md": card.encode("utf-8"), "index.html": page.encode("utf-8")}
