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


__all__ = ["DEFAULTS", "LIMITS", "ModelShelf", "model_card_markdown", "build_app", "serve", "space_files", "launch"]

DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
            "seed": 0}

# What one visitor's request may hold. A request body past request_bytes is answered 413 before it is read (a 10 MB
# message is never parsed: parsed, seven of them grew the server by 500 MB that it kept); a message past
# message_chars is refused before it is tokenized, and a long history is cut from the left (oldest first) by
# characters; the generation code then cuts what is left to the model's context in tokens. The queue holds this many
# waiting requests; past that, Gradio answers "Queue is full" (HTTP 503) at once.
LIMITS = {"message_chars": 4_000, "history_chars": 32_000, "history_messages": 200, "queue": 32,
          "request_bytes": 1_000_000}
ROLES = ("user", "assistant")


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


def display_names(names: list[str]) -> dict[str, str]:
    """Each model's display name -> the model argument as given; two folders of one name get " (2)", " (3)"."""
    named = {}
    for name in names:
        shown, n = display_name(name), 1
        while (shown if n == 1 else f"{shown} ({n})") in named:
            n += 1
        named[shown if n == 1 else f"{shown} ({n})"] = name
    return named


def model_card_markdown(name: str, model, tokenizer, metrics: dict) -> str:
    """What a visitor needs to know about a model, from its config, tokenizer and metrics.json."""
    training = metrics.get("training", {})
    context = context_length(model)
    lines = [f"**{name}**", "",
             f"- {model.num_parameters():,} parameters, context {context} tokens, vocabulary {len(tokenizer):,}"]
    if context:
        lines.append(f"- replies of up to {context // 2} tokens (half the context; the rest holds the prompt)")
    if training:
        data = (training.get("data_card_name") or training.get("dataset_name")
                or ", ".join([d["name"] for d in training.get("hub_datasets") or []]
                             + [name for name in training.get("inputs", []) if not name.startswith("hf://")]))
        lines.append(f"- trained on {data}: {training.get('train_tokens', 0):,} tokens, "
                     f"{metrics.get('global_step', '?'):,} steps")
    if "eval_perplexity" in metrics:
        lines.append(f"- validation perplexity {metrics['eval_perplexity']:.2f}")
    if "eval_bits_per_byte" in metrics:
        lines.append(f"- validation bits per byte {metrics['eval_bits_per_byte']:.3f}")
    if training.get("base_model"):
        lines.append(f"- fine-tuned from {training['base_model']}")
    if not tokenizer.chat_template:
        lines.append("- chat: no (complete mode only)")
    elif training.get("chat") is False:  # a chat template, but trained on plain text: it continues text
        lines.append("- chat: no, trained on plain text (use Complete)")
    else:
        lines.append("- chat: yes (its chat template)")
    return "\n".join(lines)


class ModelShelf:
    """The demo's models by display name (a visitor never sees or sends a local path), each loaded on first use and
    then kept (one copy in memory per model)."""

    def __init__(self, names: list[str]):
        if not names:
            raise ValueError("give at least one model folder or Hub id")
        self._sources = display_names(names)
        self.names = list(self._sources)
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def longest_reply(self) -> int:
        """The most new tokens any of the models allows (half its context, read from its config alone)."""
        from transformers import AutoConfig

        limits = []
        for source in self._sources.values():
            try:
                config = AutoConfig.from_pretrained(source)
            except (OSError, ValueError):
                continue  # the page says why when the model is chosen
            limits.append((getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0)) // 2)
        return max([limit for limit in limits if limit > 0] or [512])

    def get(self, name: str) -> tuple:
        """(model, tokenizer, card markdown) of the model shown as ``name``."""
        if name not in self._sources:
            raise ValueError(f"unknown model {name!r}; this demo serves {', '.join(self.names)}")
        with self._lock:
            if name not in self._loaded:
                model, tokenizer = load_model_and_tokenizer(self._sources[name])
                card = model_card_markdown(name, model, tokenizer, _metrics(self._sources[name]))
                self._loaded[name] = (model, tokenizer, card)
            return self._loaded[name]


def _settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed) -> dict:
    """The page's controls as generation arguments (check_sampling refuses what is out of range)."""
    if seed is None or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed}")
    return {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "top_k": int(top_k),
            "top_p": float(top_p), "repetition_penalty": float(repetition_penalty), "seed": int(seed)}


def _text(content, where: str) -> str:
    """A chat message's text: Gradio 6 hands the history back as lists of parts (``[{"type": "text", ...}]``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and isinstance(part.get("text", ""), str)
                                         for part in content):
        return "".join(part.get("text", "") for part in content)
    raise ValueError(f"{where}: the content is not text")


def _checked_message(message, what: str = "message") -> str:
    if not isinstance(message, str):
        raise ValueError(f"the {what} is not text")
    if len(message) > LIMITS["message_chars"]:
        raise ValueError(f"the {what} is {len(message):,} characters long; this demo takes at most "
                         f"{LIMITS['message_chars']:,}")
    return message


def _checked_history(history) -> list[dict[str, str]]:
    """The history as ``[{"role", "content"}]``, its newest messages only (``LIMITS``); one line for anything that is
    not a list of user and assistant messages."""
    if not isinstance(history, list):
        raise ValueError("the chat history is not a list of messages")
    recent, size = [], 0
    for number, message in reversed(list(enumerate(history[-LIMITS["history_messages"]:], start=1))):
        where = f"history message {number}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise ValueError(f"{where}: role {role!r}; the chat takes {' and '.join(ROLES)} messages")
        text = _text(message.get("content"), where)
        size += len(text)
        if size > LIMITS["history_chars"]:
            break  # the older messages would not fit the model's context anyway
        recent.append({"role": message["role"], "content": text})
    return recent[::-1]


def chat(shelf: ModelShelf, name: str, history: list[dict], message: str, settings: dict,
         stop: threading.Event | None = None) -> Iterator[list[dict]]:
    """The chat history with the new user message and the assistant's reply as it grows. The history keeps its
    newest messages within ``LIMITS`` and is then cut from the left (oldest turns first) by the generation code, so
    the latest turns always fit the context. Raises ``ValueError`` (one line) for a malformed history or a message
    past the limit, before anything is tokenized."""
    message = _checked_message(message)
    messages = _checked_history(history) + [{"role": "user", "content": message}]
    model, tokenizer, _ = shelf.get(name)
    for reply in stream_reply(model, tokenizer, messages, stop=stop, **settings):
        yield messages + [{"role": "assistant", "content": reply}]


def complete(shelf: ModelShelf, name: str, prompt: str, settings: dict,
             stop: threading.Event | None = None) -> Iterator[str]:
    """The prompt's continuation as it grows (a prompt past ``LIMITS["message_chars"]`` is refused)."""
    prompt = _checked_message(prompt, "text to continue")
    model, tokenizer, _ = shelf.get(name)
    yield from stream_reply(model, tokenizer, prompt, stop=stop, **settings)


class _StopButtons:
    """One stop flag per visitor (Gradio session) while a reply is being made: one visitor's Stop ends only their
    own reply. Flags exist only while their reply runs, so the table stays as small as the number of replies."""

    def __init__(self):
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._running[session] = threading.Event()
            return self._running[session]

    def press(self, session: str) -> None:
        with self._lock:
            if session in self._running:
                self._running[session].set()

    def done(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._running.get(session) is event:
                del self._running[session]


def build_app(names: list[str], title: str = "scratchgpt"):
    """The Gradio page for ``names`` (model folders or Hub ids): a model selector with each model's facts, Chat and
    Complete tabs streaming their replies, a stop button, and the sampling controls."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing is sent
    import gradio as gr

    shelf = ModelShelf(names)
    stops = _StopButtons()

    def describe(name):
        try:
            return shelf.get(name)[2]
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from None

    def session(request) -> str:
        return getattr(request, "session_hash", None) or "no-session"

    def on_chat(name, history, message, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                request: gr.Request):
        stop = stops.start(session(request))
        try:
            settings = _settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
            yield from ((updated, "") for updated in chat(shelf, name, history or [], message, settings, stop))
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from None
        finally:
            stops.done(session(request), stop)

    def on_complete(name, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                    request: gr.Request):
        stop = stops.start(session(request))
        try:
            settings = _settings(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
            yield from complete(shelf, name, prompt, settings, stop)
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from None
        finally:
            stops.done(session(request), stop)

    def on_stop(request: gr.Request):
        stops.press(session(request))

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nSmall GPT language models trained from scratch. Replies are made up by a small "
                    f"model: expect fluent nonsense.")
        with gr.Row():
            with gr.Column(scale=3):
                model = gr.Dropdown(shelf.names, value=shelf.names[0], label="Model", elem_id="model")
                with gr.Tab("Chat", elem_id="chat-tab"):
                    chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360)
                    message = gr.Textbox(label="Message", placeholder="Say something and press Enter",
                                         max_length=LIMITS["message_chars"], elem_id="message")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        stop_chat = gr.Button("Stop", elem_id="stop-chat")
                        clear = gr.Button("Clear", elem_id="clear")
                with gr.Tab("Complete", elem_id="complete-tab"):
                    prompt = gr.Textbox(label="Text to continue", lines=3, max_length=LIMITS["message_chars"],
                                        elem_id="prompt")
                    continuation = gr.Textbox(label="Continuation", lines=8, interactive=False,
                                              elem_id="continuation")
                    with gr.Row():
                        go = gr.Button("Continue", variant="primary", elem_id="go")
                        stop_complete = gr.Button("Stop", elem_id="stop-complete")
            with gr.Column(scale=2):
                card = gr.Markdown(elem_id="card")
                with gr.Accordion("Sampling", open=True):
                    controls = [
                        gr.Slider(1, shelf.longest_reply(), step=1, label="Max new tokens",
                                  value=min(DEFAULTS["max_new_tokens"], shelf.longest_reply()),
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
            # at once, not behind the replies (no concurrency limit); "/stop" ends the caller's own reply only
            button.click(on_stop, None, None, api_name="stop" if button is stop_chat else False,
                         concurrency_limit=None)
        clear.click(lambda: [], None, chatbot, api_name=False)
    return app


class _BodyLimit:
    """ASGI middleware: an HTTP request whose body is larger than ``limit`` bytes is answered 413 before its body is
    read (by its Content-Length; a body sent without one is cut off once it passes the limit)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and int(length) > self.limit:
            body = (f"request too large: {int(length):,} bytes; this demo takes at most {self.limit:,} (a message "
                    f"of at most {LIMITS['message_chars']:,} characters)").encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            return await send({"type": "http.response.body", "body": body})
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise ValueError(f"request body past {self.limit:,} bytes")
            return message

        return await self.app(scope, limited_receive, send)


def serve(app, max_queue: int = LIMITS["queue"], **launch_kwargs):
    """Start serving ``app``: one generation at a time, at most ``max_queue`` requests waiting (past that, an
    immediate "Queue is full"), with a theme in the browser's own fonts: Gradio's default theme would load Google
    Fonts, and the page must fetch nothing from outside."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    from starlette.middleware import Middleware

    body_limit = Middleware(_BodyLimit, limit=LIMITS["request_bytes"])
    return app.queue(default_concurrency_limit=1, max_size=max_queue).launch(
        theme=theme, app_kwargs={"middleware": [body_limit]}, **launch_kwargs)


def launch(names: list[str], host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           max_queue: int = LIMITS["queue"]) -> None:
    """Serve the page until interrupted (``scratchgpt demo``), saying where in one line (Gradio's own banner names
    its Python arguments, not this command's flags)."""
    app = build_app(names)
    _, local_url, share_url = serve(app, max_queue=max_queue, server_name=host, server_port=port, share=share,
                                    inbrowser=False, quiet=True, prevent_thread_lock=True)
    where = f"{local_url} and {share_url}" if share_url else local_url
    print(f"serving {', '.join(display_names(names))} at {where}; Ctrl-C stops"
          + ("" if share else " (--share for a temporary public link)"), flush=True)
    app.block_thread()


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


# The package files the page imports (a test checks this against what `import scratchgpt.demo` loads): a Space gets
# exactly these, never whatever else lies in the package folder (an editable install may hold stray files)
SPACE_MODULES = ("__init__.py", "demo.py", "generation.py", "loading.py", "modeling/__init__.py",
                 "modeling/configuration_scratchgpt.py", "modeling/loss_scratchgpt.py",
                 "modeling/modeling_scratchgpt.py", "tokenization/__init__.py", "tokenization/legacy.py",
                 "tokenization/portable.py", "tokenization/trainers.py")


def space_files(names: list[str], title: str | None = None) -> dict[str, bytes]:
    """The files of a Gradio Space serving ``names`` (Hub ids): ``app.py``, ``requirements.txt``, a ``README.md``
    with the Space's metadata, and the scratchgpt modules the page needs (``SPACE_MODULES``; the package is not on
    PyPI)."""
    title = title or ", ".join(name.split("/")[-1] for name in names)
    package = Path(__file__).resolve().parent
    files = {f"scratchgpt/{module}": (package / module).read_bytes() for module in SPACE_MODULES}
    files["app.py"] = SPACE_APP.format(models=", ".join(names), names=list(names), title=title).encode()
    files["requirements.txt"] = SPACE_REQUIREMENTS.encode()
    models = "\n".join(f"  - {name}" for name in names)
    files["README.md"] = (f"---\ntitle: {title}\nsdk: gradio\napp_file: app.py\nmodels:\n{models}\n---\n\n"
                          f"# {title}\n\nChat with {', '.join(names)} in the browser: small GPT language models "
                          f"trained from scratch with scratchgpt.\n").encode()
    return files
