"""The static Space (`push_to_hub.py --static-space`): its page, run in Chromium against local copies of
transformers.js, ONNX Runtime's WebAssembly and an exported model (the browser reaches nothing else)."""

import http.server
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.cli import main as cli
from scratchgpt.cli import save_model_folder
from scratchgpt.generation import chat_reply
from scratchgpt.hub import push_space
from scratchgpt.static_space import TRANSFORMERS_JS as CDN_LIBRARY
from scratchgpt.static_space import space_files
from scratchgpt.tokenization import generation_eos_token_ids

from .hub_server import HubServer
from .test_demo import browser, shown, wait_for
from .test_hub import REPO, TOKEN
from .testing_utils import TRANSFORMERS_JS, hub_client_env, tiny_config, tiny_tokenizer


def test_the_space_is_static_and_names_its_model():
    files = space_files("me/web", title="My: model")
    card, page = files["README.md"].decode(), files["index.html"].decode()
    assert "sdk: static" in card and 'title: "My: model"' in card and "- me/web" in card
    assert f'from "{CDN_LIBRARY}"' in page and 'const MODEL = "me/web";' in page
    assert 'env.remoteHost = "https://huggingface.co/";' in page and "const wasmPaths = null;" in page
    result = push_space("me/web-space", ["me/web"], dry_run=True, static=True)
    assert [name for name, _ in result["files"]] == ["README.md", "index.html"]


class _Files(http.server.SimpleHTTPRequestHandler):
    """GET by prefix: /lib/ transformers.js' browser build, /ort/ ONNX Runtime's WebAssembly files, /models/ the
    Hub layout ({repo}/resolve/main/{file}), / the page."""

    extensions_map = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".html": "text/html", "": "application/octet-stream"}

    def __init__(self, *args, roots: dict[str, Path], **kwargs):
        self.roots = roots
        super().__init__(*args, **kwargs)

    def translate_path(self, path):
        path = path.split("?")[0]
        for prefix, root in self.roots.items():
            if path.startswith(prefix):
                return str(root / path[len(prefix):])
        return str(Path("/nonexistent"))

    def log_message(self, *args):
        pass


@pytest.mark.browser
@pytest.mark.transformersjs
def test_a_visitor_chats_with_the_model_in_the_page(tmp_path):
    tokenizer = tiny_tokenizer()
    model = ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), n_embd=64, initializer_range=0.2)).eval()
    model.generation_config.eos_token_id = generation_eos_token_ids(tokenizer)  # as train.py saves it
    save_model_folder(model, str(tmp_path / "model"), tokenizer)
    assert cli(["convert", "to-onnx", str(tmp_path / "model"), str(tmp_path / "web")]) == 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Files, roots={}))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ort = TRANSFORMERS_JS.parents[1] / "onnxruntime-web" / "dist"
    files = space_files("me/web", library=f"{base}/lib/transformers.js", hub=f"{base}/models/",
                        wasm={"mjs": f"{base}/ort/ort-wasm-simd-threaded.asyncify.mjs",
                              "wasm": f"{base}/ort/ort-wasm-simd-threaded.asyncify.wasm"})
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "index.html").write_bytes(files["index.html"])
    server.RequestHandlerClass = partial(_Files, roots={
        "/lib/": TRANSFORMERS_JS / "dist", "/ort/": ort, "/models/me/web/resolve/main/": tmp_path / "web",
        "/": tmp_path / "space"})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = browser()
    try:
        from selenium.webdriver.common.by import By

        driver.get(f"{base}/index.html")
        status = lambda: driver.find_element(By.ID, "status").text  # noqa: E731
        wait_for(lambda: "runs in this page" in status(), timeout=120, describe=status)
        assert "chat" in status()
        for element_id, value in (("temperature", "0"), ("max-new-tokens", "16")):
            box = driver.find_element(By.ID, element_id)
            box.clear()
            box.send_keys(value)
        for text in ("Hello there", "How are you?"):
            driver.find_element(By.ID, "message").send_keys(text)
            driver.find_element(By.ID, "send").click()
            wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".assistant[data-done]")) ==
                     (1 if text == "Hello there" else 2), timeout=60)
        replies = [p.text for p in driver.find_elements(By.CSS_SELECTOR, ".assistant")]
        first = chat_reply(model, tokenizer, [{"role": "user", "content": "Hello there"}], max_new_tokens=16,
                           temperature=0)
        second = chat_reply(model, tokenizer, [{"role": "user", "content": "Hello there"},
                                               {"role": "assistant", "content": first},
                                               {"role": "user", "content": "How are you?"}],
                            max_new_tokens=16, temperature=0)
        assert [shown(reply) for reply in replies] == [shown(first), shown(second)]
        driver.save_screenshot(str(tmp_path / "space.png"))  # a test artifact, under tmp_path
    finally:
        driver.quit()
        server.shutdown()


def test_push_to_hub_publishes_the_export_and_its_static_space(tmp_path):
    """push_to_hub.py --static-space against the local Hub stand-in: the model with onnx/model.onnx, and a Space of
    sdk static whose page names it; a folder without an ONNX graph is refused in one line, before any upload."""
    tokenizer = tiny_tokenizer()
    save_model_folder(ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer))), str(tmp_path / "model"),
                      tokenizer)
    hub = HubServer().start()
    try:
        env = hub_client_env(hub, tmp_path, HF_TOKEN=TOKEN)
        refused = subprocess.run([sys.executable, str(REPO / "push_to_hub.py"), str(tmp_path / "model"), "me/web",
                                  "--static-space", "me/web-space"], env=env, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1 and "no onnx/model.onnx" in refused.stderr and not hub.repos
        assert len(refused.stderr.strip().splitlines()) == 1
        assert cli(["convert", "to-onnx", str(tmp_path / "model"), str(tmp_path / "web")]) == 0
        pushed = subprocess.run([sys.executable, str(REPO / "push_to_hub.py"), str(tmp_path / "web"), "me/web",
                                 "--static-space", "me/web-space"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        model_files, space_files_ = hub.repos["me/web"].files, hub.repos["spaces/me/web-space"].files
        assert model_files["onnx/model.onnx"] == (tmp_path / "web" / "onnx" / "model.onnx").read_bytes()
        assert b"- transformers.js" in model_files["README.md"]
        assert b"sdk: static" in space_files_["README.md"] and b'const MODEL = "me/web";' in space_files_["index.html"]
        assert TOKEN not in pushed.stdout + pushed.stderr
    finally:
        hub.stop()
