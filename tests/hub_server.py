"""A tiny in-memory server speaking the part of the Hugging Face Hub HTTP API that ``huggingface_hub`` uses to
create a repo, commit files and download them back. A test fixture (127.0.0.1 only), not part of the product.

Start it with ``HubServer().start()``; point clients at it with ``HF_ENDPOINT=server.url``.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Repo:
    def __init__(self, private: bool):
        self.private = private
        self.files: dict[str, bytes] = {}
        self.commit = "0" * 40

    def commit_files(self, files: dict[str, bytes]) -> str:
        self.files.update(files)
        digest = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.files.items()))
                              .encode()).hexdigest()
        self.commit = digest
        return digest


class HubServer:
    def __init__(self):
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.tokens_seen: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, payload, headers: dict | None = None):
                self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _record(self):
                server.requests.append((self.command, self.path))
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    server.tokens_seen.add(auth[7:])

            def do_POST(self):
                self._record()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(self._body())
                    repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
                    if request.get("type") == "space":
                        repo_id = f"spaces/{repo_id}"
                    if repo_id in server.repos:
                        return self._json(409, {"error": "You already created this model repo", "url": repo_id})
                    server.repos[repo_id] = _Repo(bool(request.get("private")))
                    return self._json(200, {"url": f"{server.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":  # model card metadata check before a README.md upload
                    self._body()
                    return self._json(200, {"errors": [], "warnings": []})
                if match := re.fullmatch(r"/api/spaces/([^/]+/[^/]+)/(preupload|commit)/(.+)", path):
                    path = path.replace("/api/spaces/", "/api/models/spaces/", 1)  # spaces are keyed "spaces/ns/name"
                if match := re.fullmatch(r"/api/models/((?:spaces/)?[^/]+/[^/]+)/preupload/(.+)", path):
                    files = json.loads(self._body())["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if match := re.fullmatch(r"/api/models/((?:spaces/)?[^/]+/[^/]+)/commit/(.+)", path):
                    repo = server.repos.get(match.group(1))
                    if repo is None:
                        return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    files = {}
                    for line in self._body().decode().splitlines():
                        entry = json.loads(line)
                        if entry["key"] == "file":
                            files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                    oid = repo.commit_files(files)
                    return self._json(200, {"commitUrl": f"{server.url}/{match.group(1)}/commit/{oid}",
                                            "commitOid": oid})
                self._json(404, {"error": f"not implemented: POST {path}"})

            def _model_info(self, repo_id: str):
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                self._json(200, {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": repo.private,
                                 "siblings": [{"rfilename": name} for name in sorted(repo.files)]})

            def _resolve(self, repo_id: str, filename: str, head: bool):
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                if filename not in repo.files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound",
                                                 "X-Error-Message": "Entry not found"}, head)
                content = repo.files[filename]
                etag = hashlib.sha1(content).hexdigest()
                self._send(200, content, {"ETag": f'"{etag}"', "X-Repo-Commit": repo.commit,
                                          "Content-Type": "application/octet-stream"}, head)

            def _get(self, head: bool):
                self._record()
                path = self.path.split("?")[0]
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
                    return self._model_info(match.group(1))
                if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
                    return self._resolve(match.group(1), match.group(2), head)
                self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)

            def do_GET(self):
                self._get(head=False)

            def do_HEAD(self):
                self._get(head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "HubServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
