"""A tiny in-memory server speaking the part of the Hugging Face Hub HTTP API that ``huggingface_hub`` uses to
create a repo, commit files and download them back, and that ``datasets.load_dataset`` uses to read a dataset
repository (its info at a revision, the file tree, paths-info, ranged downloads). A test fixture (127.0.0.1 only),
not part of the product.

Start it with ``HubServer().start()``; point clients at it with ``HF_ENDPOINT=server.url`` (set before
``huggingface_hub`` is imported: it reads the endpoint once). ``add_dataset`` puts a dataset repository in place.
"""

import base64
import hashlib
import json
import re
import threading
from urllib.parse import parse_qs, unquote
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Repo:
    def __init__(self, private: bool):
        self.private = private
        self.files: dict[str, bytes] = {}
        self.commit = "0" * 40
        self.branches = {"main"}

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
                path = unquote(self.path.split("?")[0])
                if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path):
                    form = parse_qs(self._body().decode())
                    if repo := self._dataset(match.group(1), match.group(2)):
                        wanted = form.get("paths", [])
                        self._json(200, [self._file_entry(name, repo.files[name]) for name in wanted
                                         if name in repo.files] +
                                   [entry for entry in self._entries(repo, "", True)
                                    if entry["type"] == "directory" and entry["path"] in wanted])
                    return None
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

            def _dataset(self, repo_id: str, revision: str | None, head: bool = False) -> "_Repo | None":
                """The dataset repository at ``revision`` (a branch or its commit), or None once the error is sent."""
                repo = server.repos.get(f"datasets/{repo_id}")
                anonymous = not self.headers.get("Authorization", "").startswith("Bearer ")
                if repo is None or (repo.private and anonymous):  # as on the Hub: private is not there without a token
                    self._send(404 if repo is None else 401, b"", {"X-Error-Code": "RepoNotFound",
                                                                   "X-Error-Message": "Repository not found"}, head)
                    return None
                if revision is not None and revision not in (repo.commit, *repo.branches):
                    self._send(404, b"", {"X-Error-Code": "RevisionNotFound",
                                          "X-Error-Message": f"Invalid rev id: {revision}"}, head)
                    return None
                return repo

            def _entries(self, repo: "_Repo", folder: str, recursive: bool) -> list[dict]:
                """Tree entries under ``folder`` (files with size and oid, and the folders on the way)."""
                prefix = f"{folder}/" if folder else ""
                entries, folders = [], set()
                for name, content in sorted(repo.files.items()):
                    if not name.startswith(prefix):
                        continue
                    rest = name[len(prefix):].split("/")
                    for depth in range(1, len(rest) if recursive else min(2, len(rest))):
                        folders.add(prefix + "/".join(rest[:depth]))
                    if recursive or len(rest) == 1:
                        entries.append(self._file_entry(name, content))
                return [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
                        for f in sorted(folders)] + entries

            @staticmethod
            def _file_entry(name: str, content: bytes) -> dict:
                return {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}

            def _ranged(self, content: bytes, headers: dict, head: bool):
                """A file's bytes, or the part a ``Range: bytes=A-B`` header asks for (how parquet is streamed)."""
                wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if not wanted:
                    return self._send(200, content, {**headers, "Accept-Ranges": "bytes"}, head)
                first, last = wanted.groups()
                if not first:  # the last N bytes
                    first, last = max(0, len(content) - int(last)), len(content) - 1
                first, last = int(first), min(int(last) if last else len(content) - 1, len(content) - 1)
                self._send(206, content[first:last + 1], {**headers, "Accept-Ranges": "bytes",
                                                          "Content-Range": f"bytes {first}-{last}/{len(content)}"},
                           head)

            def _get(self, head: bool):
                self._record()
                path, _, query = self.path.partition("?")
                path = unquote(path)
                if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    if repo := self._dataset(match.group(1), match.group(2)):
                        self._json(200, {"id": match.group(1), "sha": repo.commit, "private": repo.private,
                                         "siblings": [{"rfilename": name} for name in sorted(repo.files)]})
                    return None
                if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?(.*)", path):
                    if repo := self._dataset(match.group(1), match.group(2)):
                        recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
                        self._json(200, self._entries(repo, match.group(3).strip("/"), recursive))
                    return None
                if match := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    if (repo := self._dataset(match.group(1), match.group(2), head)) is None:
                        return None
                    if match.group(3) not in repo.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound",
                                                     "X-Error-Message": "Entry not found"}, head)
                    content = repo.files[match.group(3)]
                    return self._ranged(content, {"ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                                                  "X-Repo-Commit": repo.commit,
                                                  "Content-Type": "application/octet-stream"}, head)
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

    def add_dataset(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """A dataset repository ``repo_id`` holding ``files`` (path -> content), one commit on ``main``; returns
        its sha."""
        repo = self.repos[f"datasets/{repo_id}"] = _Repo(private)
        return repo.commit_files(files)

    def start(self) -> "HubServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
