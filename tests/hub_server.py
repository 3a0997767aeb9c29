"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, enough for huggingface_hub 2.x.

Answers file resolves (`HEAD`/`GET /{repo}/resolve/{rev}/{file}` with the commit/etag/size headers
the client needs and the Hub's `X-Error-Code` 404s), repo creation, and the preupload + commit
endpoints of an upload (every file "regular", so no LFS/xet). Every reply closes its connection,
so a stopped server leaves no live keep-alive socket in the client's shared session.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    """repos[repo_id][commit][filename] = bytes; branches[repo_id][branch] = commit."""

    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    branches: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)
    created: list[dict] = field(default_factory=list)
    validated: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def add_file(self, repo_id: str, filename: str, data: bytes) -> str:
        """Publish one file in a new commit on `main`; returns the commit hash."""
        return self.commit_files(repo_id, {filename: data})

    def commit_files(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit on `branch` holding the branch's files plus these; returns its hash."""
        commits = self.repos.setdefault(repo_id, {})
        tree = dict(commits.get(self.branches.get(repo_id, {}).get(branch, ""), {}))
        tree.update(files)
        digest = hashlib.sha1(f"{repo_id}:{branch}:{len(commits)}".encode())
        for name in sorted(tree):
            digest.update(name.encode() + hashlib.sha1(tree[name]).digest())
        commit = digest.hexdigest()
        commits[commit] = tree
        self.branches.setdefault(repo_id, {})[branch] = commit
        return commit

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None
        try:  # drop pooled connections so nothing talks to a dead port
            import huggingface_hub

            huggingface_hub.close_session()
        except (ImportError, AttributeError):
            pass

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_RESOLVE = re.compile(r"^/(?:(?:models|datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    owner: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _record(self) -> None:
        self.owner.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               send_body: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)
        self.close_connection = True

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, code: str, message: str, send_body: bool = True) -> None:
        self._reply(404, json.dumps({"error": message}).encode(),
                    {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
                    send_body=send_body)

    def _resolve(self, send_body: bool) -> None:
        path = unquote(self.path.split("?", 1)[0])
        m = _RESOLVE.match(path)
        if not m:
            self._reply(404, send_body=send_body)
            return
        repo_id, rev, filename = m.groups()
        commits = self.owner.repos.get(repo_id)
        if commits is None:
            self._error("RepoNotFound", "Repository not found", send_body)
            return
        commit = self.owner.branches.get(repo_id, {}).get(rev, rev)
        if commit not in commits:
            self._error("RevisionNotFound", f"Invalid rev id: {rev}", send_body)
            return
        data = commits[commit].get(filename)
        if data is None:
            self._error("EntryNotFound", f"{filename} does not exist at {rev}", send_body)
            return
        etag = hashlib.sha256(data).hexdigest()
        self._reply(200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"',
                                "Content-Type": "application/octet-stream"}, send_body=send_body)

    def do_HEAD(self) -> None:  # noqa: N802
        self._record()
        self._resolve(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        self._resolve(send_body=True)

    def do_POST(self) -> None:  # noqa: N802
        self._record()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path == "/api/repos/create":
            data = json.loads(body or b"{}")
            self.owner.created.append(data)
            name = data.get("name", "")
            repo_id = f"{data['organization']}/{name}" if data.get("organization") else name
            self._json(200, {"url": f"{self.owner.url}/{repo_id}", "name": repo_id, "id": "x"})
            return
        if path == "/api/validate-yaml":  # model cards are checked before a commit
            self.owner.validated.append(json.loads(body or b"{}").get("content", ""))
            self._json(200, {"errors": [], "warnings": []})
            return
        m = _API.match(path)
        if not m:
            self._reply(404)
            return
        _, repo_id, action, rev = m.groups()
        rev = unquote(rev)
        if action == "preupload":
            files = json.loads(body or b"{}").get("files", [])
            self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]})
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        files: dict[str, bytes] = {}
        header: dict = {}
        for line in lines:
            if line.get("key") == "header":
                header = line["value"]
            elif line.get("key") == "file":
                v = line["value"]
                content = v["content"]
                files[v["path"]] = base64.b64decode(content) if v.get("encoding") == "base64" else content.encode()
        self.owner.commits.append({"repo_id": repo_id, "revision": rev, "header": header, "files": files,
                                   "authorization": self.headers.get("Authorization")})
        if rev not in self.owner.branches.get(repo_id, {"main": ""}):
            self._error("RevisionNotFound", f"Invalid rev id: {rev}")
            return
        commit = self.owner.commit_files(repo_id, files, branch=rev)
        self._json(200, {"commitUrl": f"{self.owner.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                         "success": True})
