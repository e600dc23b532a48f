"""A local stand-in of the Hugging Face Hub API, for push (and download) tests without the network.

It implements just what `huggingface_hub.HfApi` sends for ``create_repo``, ``upload_folder`` / ``create_commit``
(``preupload`` answered with ``uploadMode: "regular"``, so every file travels base64-encoded inside the NDJSON
commit) and ``whoami``, plus the read routes that ``from_pretrained`` / ``snapshot_download`` use
(``/api/{type}s/{repo}/revision/{rev}``, ``.../tree/{rev}`` and ``/{repo}/resolve/{rev}/{file}``), and ``/api/validate-yaml``
(the front-matter checks that matter here; ``validated`` records each README it saw). It serves 127.0.0.1 only, on a free
port, and stops when the fixture ends. Routes it does not know answer 404 and are recorded in ``unknown``.

```python
def test_push(hub):                       # the fixture below: a running HubStandIn
    api = HfApi(endpoint=hub.url, token="hf_test")
    ...
    assert hub.files("me/space", "space") == {...}
```

Library code that reads ``huggingface_hub.constants.ENDPOINT`` (read once at import) is pointed at the stand-in by
the fixture too (``HF_ENDPOINT`` for subprocesses).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

__all__ = ["HubStandIn", "hub"]


class HubStandIn:
    """The stand-in's state: ``repos[(repo_type, repo_id)]`` = {``"files"``: {path: bytes}, ``"commits"``: [...],
    ``"create"``: the create_repo payload}; ``requests`` every (method, path) served; ``unknown`` the ones refused."""

    def __init__(self):
        self.repos: dict = {}
        self.requests: list = []
        self.authorizations: list = []  # the Authorization header of every request, in the order of `requests`
        self.unknown: list = []
        self.validated: list = []  # (repo_type, front matter, errors) of every README checked by /api/validate-yaml
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)

    # -- life cycle ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> "HubStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reading the state ------------------------------------------------------------------------------------
    def files(self, repo_id: str, repo_type: str = "model") -> dict:
        """``{path: bytes}`` of the repository's head."""
        return dict(self.repos[(repo_type, repo_id)]["files"])

    def write_to(self, repo_id: str, folder, repo_type: str = "model") -> Path:
        """Write the repository's files to ``folder`` (a checkout of the stored state)."""
        folder = Path(folder)
        for path, data in self.files(repo_id, repo_type).items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
        return folder

    # -- the routes -----------------------------------------------------------------------------------------------
    def _sha(self, key) -> str:
        commits = self.repos[key]["commits"]
        return commits[-1]["oid"] if commits else "0" * 40

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body=b"", headers=None, content_type="application/json"):
                if not isinstance(body, (bytes, bytearray)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _route(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                with hub._lock:
                    hub.requests.append((self.command, path))
                    hub.authorizations.append(self.headers.get("authorization"))
                body = self._body() if self.command in ("POST", "PUT") else b""
                parts = [p for p in path.split("/") if p]
                try:
                    if self.command == "GET" and path == "/api/whoami-v2":
                        return self._send(200, {"type": "user", "name": "standin", "auth": {"type": "access_token",
                                                "accessToken": {"role": "write"}}, "orgs": []})
                    if self.command == "GET" and path == "/api/agent-harnesses":  # the client's best-effort lookup
                        return self._send(200, {"standardEnvVars": [], "harnesses": {}})
                    if self.command == "POST" and path == "/api/validate-yaml":
                        return self._validate_yaml(json.loads(body or b"{}"))
                    if self.command == "POST" and path == "/api/repos/create":
                        return self._create(json.loads(body or b"{}"))
                    if parts[:1] == ["api"] and len(parts) >= 6 and parts[1] in ("models", "datasets", "spaces"):
                        key = (parts[1][:-1], f"{parts[2]}/{parts[3]}")
                        if key not in hub.repos:
                            return self._send(404, {"error": f"Repository not found: {key[1]}"},
                                              headers={"X-Error-Code": "RepoNotFound"})
                        op = parts[4]
                        if self.command == "POST" and op == "preupload":
                            files = json.loads(body)["files"]
                            return self._send(200, {"files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                for f in files]})
                        if self.command == "POST" and op == "commit":
                            return self._commit(key, body)
                        if self.command == "GET" and op == "revision":
                            return self._info(key)
                        if self.command == "GET" and op == "tree":
                            return self._tree(key, "/".join(parts[6:]))
                    if parts[:1] == ["api"] and len(parts) == 4 and parts[1] in ("models", "datasets", "spaces") \
                            and self.command == "GET":
                        key = (parts[1][:-1], f"{parts[2]}/{parts[3]}")
                        if key in hub.repos:
                            return self._info(key)
                    if self.command in ("GET", "HEAD") and "resolve" in parts:
                        return self._resolve(parts)
                except Exception as exc:  # a malformed request: say so to the client and the test
                    with hub._lock:
                        hub.unknown.append((self.command, path, repr(exc)))
                    return self._send(400, {"error": repr(exc)})
                with hub._lock:
                    hub.unknown.append((self.command, path))
                return self._send(404, {"error": f"the stand-in does not serve {self.command} {path}"})

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _route

            def _validate_yaml(self, payload):
                """The checks the Hub makes on a README's front matter that matter here: a YAML mapping; for a
                Space a known ``sdk``, and ``sdk_version`` / ``app_file`` for Gradio."""
                import yaml

                content, repo_type = payload.get("content", ""), payload.get("repoType") or "model"
                errors = []
                match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
                meta = yaml.safe_load(match.group(1)) if match else {}
                if not isinstance(meta, dict):
                    errors.append({"message": "the front matter is not a YAML mapping"})
                    meta = {}
                if repo_type == "space":
                    if meta.get("sdk") not in ("gradio", "docker", "static", "streamlit"):
                        errors.append({"message": f"\"sdk\" must be one of gradio, docker, static, streamlit, "
                                                  f"got {meta.get('sdk')!r}"})
                    if meta.get("sdk") == "gradio" and not re.fullmatch(r"\d+\.\d+\.\d+",
                                                                       str(meta.get("sdk_version", ""))):
                        errors.append({"message": "\"sdk_version\" must be a version x.y.z for the gradio sdk"})
                    if meta.get("sdk") == "gradio" and not meta.get("app_file"):
                        errors.append({"message": "\"app_file\" is required for the gradio sdk"})
                for key in ("models", "datasets", "tags"):
                    if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
                        errors.append({"message": f"\"{key}\" must be a list of strings"})
                with hub._lock:
                    hub.validated.append((repo_type, meta, errors))
                return self._send(400 if errors else 200, {"errors": errors, "warnings": []})

            def _create(self, payload):
                repo_type = payload.get("type") or "model"
                name = payload["name"]
                repo_id = f"{payload.get('organization') or 'standin'}/{name}" if "/" not in name else name
                key = (repo_type, repo_id)
                prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
                url = f"{hub.url}/{prefix}{repo_id}"
                with hub._lock:
                    if key in hub.repos:
                        return self._send(409, {"error": "You already created this repo", "url": url})
                    hub.repos[key] = {"files": {}, "commits": [], "create": payload}
                return self._send(200, {"url": url, "name": repo_id})

            def _commit(self, key, body: bytes):
                header, files, deleted = None, {}, []
                for line in body.splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if item["key"] == "header":
                        header = item["value"]
                    elif item["key"] == "file":
                        value = item["value"]
                        if value.get("encoding") != "base64":
                            raise ValueError(f"unexpected encoding {value.get('encoding')!r}")
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "deletedFile":
                        deleted.append(item["value"]["path"])
                    else:  # lfsFile: the stand-in answered "regular" for every file, so none may come
                        raise ValueError(f"the stand-in only takes regular files, got {item['key']!r}")
                if header is None:
                    raise ValueError("a commit without a header line")
                with hub._lock:
                    repo = hub.repos[key]
                    repo["files"].update(files)
                    for path in deleted:
                        repo["files"].pop(path, None)
                    digest = hashlib.sha1(json.dumps(sorted((p, hashlib.sha1(d).hexdigest())
                                                            for p, d in repo["files"].items())).encode())
                    oid = hashlib.sha1((hub._sha(key) + digest.hexdigest()).encode()).hexdigest()
                    repo["commits"].append({"oid": oid, "summary": header.get("summary"), "files": sorted(files)})
                prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[key[0]]
                return self._send(200, {"commitUrl": f"{hub.url}/{prefix}{key[1]}/commit/{oid}", "commitOid": oid,
                                        "success": True})

            def _info(self, key):
                with hub._lock:
                    repo = hub.repos[key]
                    siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(repo["files"].items())]
                    sha = hub._sha(key)
                return self._send(200, {"id": key[1], "modelId": key[1], "sha": sha, "siblings": siblings,
                                        "private": False, "disabled": False, "gated": False, "tags": [],
                                        "downloads": 0, "likes": 0, "lastModified": "2026-01-01T00:00:00.000Z",
                                        "createdAt": "2026-01-01T00:00:00.000Z"})

            def _tree(self, key, prefix: str):
                """The recursive listing ``list_repo_tree`` reads (files and the folders above them)."""
                with hub._lock:
                    files = dict(hub.repos[key]["files"])
                prefix = prefix.strip("/")
                entries, folders = [], set()
                for path, data in sorted(files.items()):
                    if prefix and not path.startswith(prefix + "/"):
                        continue
                    parents = path.split("/")[:-1]
                    folders.update("/".join(parents[:i + 1]) for i in range(len(parents)))
                    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
                    entries.append({"type": "file", "path": path, "size": len(data), "oid": blob})
                entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)
                            if not prefix or f.startswith(prefix + "/")]
                return self._send(200, entries)

            def _resolve(self, parts):
                i = parts.index("resolve")
                prefix = parts[0] if parts[0] in ("datasets", "spaces") else None
                repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[prefix]
                repo_parts = parts[1:i] if prefix else parts[:i]
                key = (repo_type, "/".join(repo_parts))
                filename = "/".join(parts[i + 2:])
                with hub._lock:
                    repo = hub.repos.get(key)
                    data = None if repo is None else repo["files"].get(filename)
                    sha = None if repo is None else hub._sha(key)
                if repo is None:
                    return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
                if data is None:
                    return self._send(404, {"error": "Entry not found"},
                                      headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                return self._send(200, data, content_type="application/octet-stream",
                                  headers={"X-Repo-Commit": sha, "ETag": etag})

        return Handler


@pytest.fixture
def hub(monkeypatch):
    """A running `HubStandIn` on 127.0.0.1; ``HF_ENDPOINT`` and ``huggingface_hub.constants.ENDPOINT`` point at it
    (and a dummy ``HF_TOKEN`` is set) for the test's duration."""
    import huggingface_hub.constants as hf_constants

    server = HubStandIn().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    if hasattr(hf_constants, "HF_HUB_OFFLINE"):
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", server.url)  # the module-level HfApi behind `model_info` & co
    try:
        yield server
    finally:
        server.stop()
