"""A web page to talk to your models: ``scratchgpt demo MODEL [MODEL ...]`` (Gradio), locally or as a Space.

Reading order: what a visitor sees about a model (``model_card_markdown``), the models kept in memory
(``ModelShelf``), the two functions behind the page (``chat`` and ``complete``, which stream the reply through
``generation.stream_reply``, the code ``scratchgpt generate`` and ``chat`` use), the page itself (``build_app``)
and the files of a Hugging Face Space that serves the same page (``space_files``).

The page works offline and sends nothing anywhere: Gradio's analytics are switched off before it is imported, the
theme uses the browser's own fonts (Gradio's default theme would fetch Google Fonts), and no share link is made
unless asked for (``--share``).
"""

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .generation import context_length, stream_reply
from .loading import load_model_and_tokenizer


__all__ = ["DEFAULTS", "ModelShelf", "model_card_markdown", "build_app", "serve", "space_files", "launch"]

DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
            "seed": 0}


def _metrics(source: str) -> dict:
    """A model's metrics.json (local folder, or the Hub repo's file), or {} where there is none."""
    local = Path(source) / "metrics.json"
    try:
        if local.is_file():
            return json.loads(local.read_text(encoding="utf-8"))
        if not Path(source).exists():
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(source, "metrics.json")).read_text(encoding="utf-8"))
    except Exception:  # no metrics.json, or unreadable: the card just leaves those lines out
        pass
    return {}


def display_name(name: str) -> str:
    """How the page names a model: a Hub id as it is, a local folder by its own name (not its path)."""
    return name if not Path(name).exists() else Path(name).resolve().name


def model_card_markdown(name: str, model, tokenizer, metrics: dict) -> str:
    """What a visitor needs to know about a model, from its config, tokenizer and metrics.json."""
    training = metrics.get("training", {})
    lines = [f"**{name}**", "",
             f"- {model.num_parameters():,} parameters, context {context_length(model)} tokens, "
             f"vocabulary {len(tokenizer):,}"]
    if training:
        data = training.get("dataset_name") or ", ".join(training.get("inputs", []))
        lines.append(f"- trained on {data}: {training.get('train_tokens', 0):,} tokens, "
                     f"{metrics.get('global_step', '?'):,} steps")
    if "eval_perplexity" in metrics:
        lines.append(f"- validation perplexity {metrics['eval_perplexity']:.2f}")
    if "eval_bits_per_byte" in metrics:
        lines.append(f"- validation bits per byte {metrics['eval_bits_per_byte']:.3f}")
    if training.get("base_model"):
        lines.append(f"- fine-tuned from {training['base_model']}")
    lines.append(f"- chat: {'yes (its chat template)' if tokenizer.chat_template else 'no (complete mode only)'}")
    return "\n".join(lines)


class ModelShelf:
    """The demo's models by name, each loaded on first use and then kept (one copy in memory per model)."""

    def __init__(self, names: list[str]):
        if not names:
            raise ValueError("give at least one model folder or Hub id")
        self.names = list(names)
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple:
        """(model, tokenizer, card markdown) of ``name``."""
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}; this demo serves {', '.join(self.names)}")
        with self._lock:
            if name not in self._loaded:
                model, tokenizer = load_model_and_tokenizer(name)
                card = model_card_markdown(display_name(name), model, tokenizer, _metrics(name))
                self._loaded[name] = (model, tokenizer, card)
            return self._loaded[name]


def _settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed) -> dict:
    """The page's controls as generation arguments (check_sampling refuses what is out of range)."""
    if seed is None or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed}")
    return {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "top_k": int(top_k),
            "top_p": float(top_p), "repetition_penalty": float(repetition_penalty), "seed": int(seed)}


def _text(content) -> str:
    """A chat message's text: Gradio 6 hands the history back as lists of parts (``[{"type": "text", ...}]``)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def chat(shelf: ModelShelf, name: str, history: list[dict], message: str, settings: dict,
         stop: threading.Event | None = None) -> Iterator[list[dict]]:
    """The chat history with the new user message and the assistant's reply as it grows. The history is cut from
    the left (oldest turns first) by the generation code, so the latest turns always fit the context."""
    model, tokenizer, _ = shelf.get(name)
    messages = [{"role": m["role"], "content": _text(m["content"])} for m in history]
    messages.append({"role": "user", "content": message})
    for reply in stream_reply(model, tokenizer, messages, stop=stop, **settings):
        yield messages + [{"role": "assistant", "content": reply}]


def complete(shelf: ModelShelf, name: str, prompt: str, settings: dict,
             stop: threading.Event | None = None) -> Iterator[str]:
    """The prompt's continuation as it grows."""
    model, tokenizer, _ = shelf.get(name)
    yield from stream_reply(model, tokenizer, prompt, stop=stop, **settings)


def build_app(names: list[str], title: str = "scratchgpt"):
    """The Gradio page for ``names`` (model folders or Hub ids): a model selector with each model's facts, Chat and
    Complete tabs streaming their replies, a stop button, and the sampling controls."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing is sent
    import gradio as gr

    shelf = ModelShelf(names)
    stop = threading.Event()

    def describe(name):
        try:
            return shelf.get(name)[2]
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from None

    def on_chat(name, history, message, *controls):
        stop.clear()
        try:
            settings = _settings(*controls)
            yield from ((updated, "") for updated in chat(shelf, name, history or [], message, settings, stop))
        except ValueError as error:
            raise gr.Error(str(error)) from None

    def on_complete(name, prompt, *controls):
        stop.clear()
        try:
            yield from complete(shelf, name, prompt, _settings(*controls), stop)
        except ValueError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nSmall GPT language models trained from scratch. Replies are made up by a small "
                    f"model: expect fluent nonsense.")
        with gr.Row():
            with gr.Column(scale=3):
                model = gr.Dropdown([(display_name(name), name) for name in shelf.names], value=shelf.names[0],
                                    label="Model", elem_id="model")
                with gr.Tab("Chat", elem_id="chat-tab"):
                    chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360)
                    message = gr.Textbox(label="Message", placeholder="Say something and press Enter",
                                         elem_id="message")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        stop_chat = gr.Button("Stop", elem_id="stop-chat")
                        clear = gr.Button("Clear", elem_id="clear")
                with gr.Tab("Complete", elem_id="complete-tab"):
                    prompt = gr.Textbox(label="Text to continue", lines=3, elem_id="prompt")
                    continuation = gr.Textbox(label="Continuation", lines=8, interactive=False,
                                              elem_id="continuation")
                    with gr.Row():
                        go = gr.Button("Continue", variant="primary", elem_id="go")
                        stop_complete = gr.Button("Stop", elem_id="stop-complete")
            with gr.Column(scale=2):
                card = gr.Markdown(elem_id="card")
                with gr.Accordion("Sampling", open=True):
                    controls = [
                        gr.Slider(1, 512, value=DEFAULTS["max_new_tokens"], step=1, label="Max new tokens",
                                  elem_id="max-new-tokens"),
                        gr.Slider(0.0, 2.0, value=DEFAULTS["temperature"], step=0.05,
                                  label="Temperature (0: greedy)", elem_id="temperature"),
                        gr.Slider(0, 200, value=DEFAULTS["top_k"], step=1, label="Top-k (0: off)", elem_id="top-k"),
                        gr.Slider(0.05, 1.0, value=DEFAULTS["top_p"], step=0.05, label="Top-p", elem_id="top-p"),
                        gr.Slider(0.5, 2.0, value=DEFAULTS["repetition_penalty"], step=0.05,
                                  label="Repetition penalty (1: off)", elem_id="repetition-penalty"),
                        gr.Number(value=DEFAULTS["seed"], minimum=0, precision=0, label="Seed (same seed, same reply)",
                                  elem_id="seed"),
                    ]
        app.load(describe, model, card, api_name=False)
        model.change(describe, model, card, api_name=False)
        chat_inputs = [model, chatbot, message, *controls]
        send.click(on_chat, chat_inputs, [chatbot, message], api_name="chat")
        message.submit(on_chat, chat_inputs, [chatbot, message], api_name=False)
        go.click(on_complete, [model, prompt, *controls], continuation, api_name="complete")
        for button in (stop_chat, stop_complete):
            button.click(lambda: stop.set(), None, None, api_name=False)
        clear.click(lambda: [], None, chatbot, api_name=False)
    return app


def serve(app, **launch_kwargs):
    """Start serving ``app`` (one generation at a time) with a theme in the browser's own fonts: Gradio's default
    theme would load Google Fonts, and the page must fetch nothing from outside."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return app.queue(default_concurrency_limit=1).launch(theme=theme, **launch_kwargs)


def launch(names: list[str], host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> None:
    """Serve the page until interrupted (``scratchgpt demo``)."""
    serve(build_app(names), server_name=host, server_port=port, share=share, inbrowser=False)


SPACE_APP = '''"""The scratchgpt web demo for {models}: the same page as `scratchgpt demo`."""

from scratchgpt.demo import build_app, serve

serve(build_app({names!r}, title={title!r}))
'''

SPACE_REQUIREMENTS = """torch>=2.6
transformers>=5.0,<6
tokenizers>=0.21,<1
safetensors>=0.4
huggingface_hub>=1.0
gradio>=6,<7
"""


def space_files(names: list[str], title: str | None = None) -> dict[str, bytes]:
    """The files of a Gradio Space serving ``names`` (Hub ids): ``app.py``, ``requirements.txt``, a ``README.md``
    with the Space's metadata, and scratchgpt's own code (``scratchgpt/...``, the package is not on PyPI)."""
    title = title or ", ".join(name.split("/")[-1] for name in names)
    package = Path(__file__).resolve().parent
    files = {f"scratchgpt/{path.relative_to(package)}": path.read_bytes() for path in sorted(package.rglob("*.py"))}
    files["app.py"] = SPACE_APP.format(models=", ".join(names), names=list(names), title=title).encode()
    files["requirements.txt"] = SPACE_REQUIREMENTS.encode()
    models = "\n".join(f"  - {name}" for name in names)
    files["README.md"] = (f"---\ntitle: {title}\nsdk: gradio\napp_file: app.py\nmodels:\n{models}\n---\n\n"
                          f"# {title}\n\nChat with {', '.join(names)} in the browser: small GPT language models "
                          f"trained from scratch with scratchgpt.\n").encode()
    return files
