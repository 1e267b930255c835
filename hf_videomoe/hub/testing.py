"""A minimal Hugging Face Hub-compatible HTTP server on loopback, for testing pushes and downloads offline.

[`LoopbackHubServer`] implements just the endpoints that `huggingface_hub` (and `transformers.from_pretrained`) use to
create a model repo, commit files and download them again:

====================================================  ===========================================================
``POST /api/repos/create``                            create a repo (409 if it exists, which ``exist_ok`` accepts)
``POST /api/validate-yaml``                           README metadata check done by ``create_commit``
``POST /api/models/{repo}/preupload/{rev}``           answers ``"uploadMode": "regular"`` for every file, so the
                                                      content travels base64-encoded inside the commit (no LFS, no
                                                      Xet)
``POST /api/models/{repo}/commit/{rev}``              NDJSON commit: a header line then one line per operation
``GET  /api/models/{repo}[/revision/{rev}]``          model info with ``sha`` and ``siblings``
``GET  /api/models/{repo}/tree/{rev}[/{path}]``       file listing (``list_repo_files`` / ``list_repo_tree``)
``POST /api/models/{repo}/paths-info/{rev}``          ``get_paths_info``
``HEAD|GET /{repo}/resolve/{rev}/{path}``             file download with ``X-Repo-Commit``, ``ETag`` and
                                                      ``Content-Length`` headers (no Xet headers, so clients use
                                                      plain HTTP)
====================================================  ===========================================================

Failure modes can be injected per endpoint (``"create"``, ``"preupload"``, ``"commit"``, ``"info"``,
``"resolve"``, or ``"*"``) and optionally per repository, to test how callers handle a server error or a dropped
connection:

```python
>>> from hf_videomoe.hub.testing import LoopbackHubServer
>>> with LoopbackHubServer() as server:
...     server.fail("commit", status=500)                      # every commit answers HTTP 500
...     server.fail("commit", drop=True, repo_id="me/flaky")    # commits to me/flaky drop the connection
...     # run the client in a subprocess with HF_ENDPOINT=server.url (huggingface_hub reads it at import)
```

The server keeps everything in memory; it does no authentication (tokens are accepted and ignored). It can also run
on its own: ``python -m hf_videomoe.hub.testing --port 0`` prints ``http://127.0.0.1:PORT`` and serves until
interrupted.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FailureMode", "LoopbackHubServer", "git_blob_sha1"]

_ENDPOINTS = ("create", "validate", "preupload", "commit", "info", "tree", "paths-info", "resolve", "*")


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob, which the Hub uses as the ``ETag`` / ``oid`` of regular (non-LFS) files."""
    return hashlib.sha1(b"blob " + str(len(content)).encode() + b"\0" + content).hexdigest()


@dataclass
class FailureMode:
    """A failure injected into one endpoint: answer ``status`` (with ``message``), or drop the connection."""

    endpoint: str
    status: int | None = 500
    drop: bool = False
    repo_id: str | None = None
    message: str = "Internal Server Error (injected by LoopbackHubServer)"
    times: int | None = None  # None: forever; n: only the next n matching requests

    def matches(self, endpoint: str, repo_id: str | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.endpoint not in ("*", endpoint):
            return False
        return self.repo_id is None or self.repo_id == repo_id


@dataclass
class _Repo:
    repo_id: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # newest last: {"oid", "title", "files": {path: bytes}}

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"]

    def files_at(self, revision: str) -> dict[str, bytes] | None:
        if revision in ("main", "refs/heads/main"):
            return self.files
        for commit in self.commits:
            if commit["oid"] == revision:
                return commit["files"]
        return None

    def commit_for(self, revision: str) -> str | None:
        if revision in ("main", "refs/heads/main"):
            return self.head
        return revision if any(c["oid"] == revision for c in self.commits) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # -- plumbing -------------------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        if self.server.hub.verbose:
            super().log_message(format, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, *, headers: dict | None = None, body: bytes | None = None) -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=headers)

    def _drop(self) -> None:
        """Close the TCP connection without answering (a 'dropped connection' as the client sees it)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _maybe_fail(self, endpoint: str, repo_id: str | None) -> bool:
        failure = self.server.hub._take_failure(endpoint, repo_id)
        if failure is None:
            return False
        if failure.drop:
            self._drop()
        else:
            self._error(failure.status or 500, failure.message)
        return True

    # -- routing --------------------------------------------------------------------------------------------------
    def do_HEAD(self):  # noqa: N802 - http.server naming
        self._dispatch()

    def do_GET(self):  # noqa: N802
        self._dispatch()

    def do_POST(self):  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        body = self._body() if self.command == "POST" else b""
        hub = self.server.hub
        with hub._lock:
            hub.requests.append((self.command, self.path))
        try:
            self._route(path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:  # a bug in the test server: answer 500 with the reason instead of hanging
            self._error(500, f"LoopbackHubServer error: {type(err).__name__}: {err}")

    def _route(self, path: str, query: dict, body: bytes) -> None:
        hub = self.server.hub
        if self.command == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if self.command == "POST" and path == "/api/validate-yaml":
            if self._maybe_fail("validate", None):
                return
            return self._send(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|paths-info)/(.+)", path)
        if match and self.command == "POST":
            repo_id, action, revision = match.groups()
            repo = hub.repos.get(repo_id)
            if self._maybe_fail(action, repo_id):
                return
            if repo is None:
                return self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            if action == "preupload":
                return self._preupload(repo, json.loads(body or b"{}"))
            if action == "paths-info":
                return self._paths_info(repo, revision, body)
            return self._commit(repo, revision, body)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if match and self.command == "GET":
            repo_id, revision = match.groups()
            return self._model_info(repo_id, revision or "main")
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if match and self.command == "GET":
            repo_id, revision, sub = match.groups()
            return self._tree(repo_id, revision, sub or "", query)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and self.command in ("GET", "HEAD"):
            return self._resolve(*match.groups())
        return self._error(404, f"LoopbackHubServer does not implement {self.command} {path}")

    # -- endpoints ------------------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict) -> None:
        name, organization = payload.get("name"), payload.get("organization")
        repo_id = f"{organization}/{name}" if organization else f"{self.server.hub.default_namespace}/{name}"
        if self._maybe_fail("create", repo_id):
            return
        if payload.get("type") not in (None, "model"):
            return self._error(400, "LoopbackHubServer only hosts model repositories")
        url = f"{self.server.hub.url}/{repo_id}"
        created = self.server.hub._create(repo_id, private=payload.get("visibility") == "private")
        if not created:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo: _Repo, payload: dict) -> None:
        files = []
        for entry in payload.get("files", []):
            existing = repo.files.get(entry["path"])
            files.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",  # content goes inline in the commit: no LFS / Xet round trip
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._send(200, {"files": files, "commitOid": repo.head})

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> None:
        if revision not in ("main", "refs%2Fheads%2Fmain", "refs/heads/main"):
            return self._error(400, f"LoopbackHubServer only commits to 'main', not {revision!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        if parent := header.get("parentCommit"):
            if parent != repo.head:
                return self._error(412, f"A commit has happened since {parent}; head is {repo.head}")
        new_files = dict(repo.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    return self._error(400, f"Unsupported encoding {value.get('encoding')!r}")
                new_files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                new_files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                new_files = {p: c for p, c in new_files.items() if not p.startswith(prefix)}
            elif key == "lfsFile":
                return self._error(400, "LoopbackHubServer answered 'regular' upload mode; LFS files are not accepted")
            else:
                return self._error(400, f"Unknown commit operation {key!r}")
        oid = self.server.hub._add_commit(repo, header.get("summary", ""), new_files)
        self._send(
            200,
            {"commitUrl": f"{self.server.hub.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
        )

    def _model_info(self, repo_id: str, revision: str) -> None:
        if self._maybe_fail("info", repo_id):
            return
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        files = repo.files_at(revision)
        if files is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        self._send(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": repo.commit_for(revision),
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": name, "size": len(content)} for name, content in sorted(files.items())],
            },
        )

    def _tree_entries(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        entries: dict[str, dict] = {}
        for name, content in sorted(files.items()):
            if not name.startswith(base):
                continue
            rest = name[len(base) :]
            if "/" in rest and not recursive:
                folder = base + rest.split("/")[0]
                entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    folder = base + "/".join(parts[:depth])
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            entries[name] = {"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": name}
        return list(entries.values())

    def _tree(self, repo_id: str, revision: str, sub: str, query: dict) -> None:
        if self._maybe_fail("tree", repo_id):
            return
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        files = repo.files_at(unquote(revision))
        if files is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._send(200, self._tree_entries(files, sub, recursive))

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> None:
        files = repo.files_at(unquote(revision))
        if files is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for path in paths:
            if path in files:
                out.append({"type": "file", "oid": git_blob_sha1(files[path]), "size": len(files[path]), "path": path})
            elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path})
        self._send(200, out)

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        if self._maybe_fail("resolve", repo_id):
            return
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        revision = unquote(revision)
        files = repo.files_at(revision)
        if files is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        commit = repo.commit_for(revision)
        if filename not in files:
            return self._send(
                404,
                {"error": "Entry not found"},
                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit},
            )
        content = files[filename]
        self._send(
            200,
            body=content,
            headers={
                "Content-Type": "application/octet-stream",
                "X-Repo-Commit": commit,
                "ETag": f'"{git_blob_sha1(content)}"',
                "Accept-Ranges": "none",
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: "LoopbackHubServer"


class LoopbackHubServer:
    """An in-memory Hub-compatible server on ``127.0.0.1`` running in a background thread.

    Args:
        host: interface to bind; keep the default loopback address.
        port: 0 picks a free port (read it back from [`url`]).
        default_namespace: namespace of repos created without an organization.
        verbose: log every request to stderr.

    Use as a context manager, or call [`start`] / [`stop`]. Point clients at [`url`] through ``HF_ENDPOINT`` (in a
    subprocess: ``huggingface_hub`` reads it at import time). ``requests`` records every ``(method, path)`` served.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default_namespace: str = "user", verbose: bool = False):
        self.host, self.port = host, port
        self.default_namespace = default_namespace
        self.verbose = verbose
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[FailureMode] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (valid once started)."""
        if self._server is None:
            raise RuntimeError("LoopbackHubServer is not running; call start() first.")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LoopbackHubServer":
        """Bind the socket and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), _Handler)
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="LoopbackHubServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LoopbackHubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- failure injection ----------------------------------------------------------------------------------------
    def fail(
        self,
        endpoint: str,
        *,
        status: int | None = 500,
        drop: bool = False,
        repo_id: str | None = None,
        message: str | None = None,
        times: int | None = None,
    ) -> FailureMode:
        """Make ``endpoint`` (one of ``create``, ``validate``, ``preupload``, ``commit``, ``info``, ``tree``,
        ``paths-info``, ``resolve`` or ``*``) answer HTTP ``status`` or drop the connection (``drop=True``), for one
        repository (``repo_id``) or all, forever or the next ``times`` requests. Returns the registered mode."""
        if endpoint not in _ENDPOINTS:
            raise ValueError(f"Unknown endpoint {endpoint!r}; expected one of {_ENDPOINTS}.")
        mode = FailureMode(endpoint=endpoint, status=status, drop=drop, repo_id=repo_id, times=times)
        if message is not None:
            mode.message = message
        with self._lock:
            self.failures.append(mode)
        return mode

    def clear_failures(self) -> None:
        """Remove every injected failure."""
        with self._lock:
            self.failures.clear()

    def _take_failure(self, endpoint: str, repo_id: str | None) -> FailureMode | None:
        with self._lock:
            for mode in self.failures:
                if mode.matches(endpoint, repo_id):
                    if mode.times is not None:
                        mode.times -= 1
                    return mode
        return None

    # -- state ----------------------------------------------------------------------------------------------------
    def _create(self, repo_id: str, private: bool = False) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = _Repo(repo_id=repo_id, private=private)
            self._add_commit(repo, "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self.repos[repo_id] = repo
            return True

    def _add_commit(self, repo: _Repo, title: str, files: dict[str, bytes]) -> str:
        with self._lock:
            seed = f"{repo.repo_id}\n{len(repo.commits)}\n{title}\n{time.time_ns()}".encode()
            digest = hashlib.sha1(seed)
            for name in sorted(files):
                digest.update(name.encode() + b"\0" + git_blob_sha1(files[name]).encode())
            oid = digest.hexdigest()
            repo.files = dict(files)
            repo.commits.append({"oid": oid, "title": title, "files": dict(files)})
            return oid

    def create_repo(self, repo_id: str, private: bool = False) -> None:
        """Create ``repo_id`` directly (no HTTP), e.g. to prepare a test."""
        self._create(repo_id, private=private)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Files of ``repo_id`` at ``revision`` (``{}`` if the repo does not exist)."""
        repo = self.repos.get(repo_id)
        return dict(repo.files_at(revision) or {}) if repo else {}

    def commits(self, repo_id: str) -> list[dict]:
        """Commits of ``repo_id``, oldest first: ``{"oid", "title", "files"}``."""
        repo = self.repos.get(repo_id)
        return list(repo.commits) if repo else []


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted: ``python -m hf_videomoe.hub.testing [--port PORT] [--verbose]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    server = LoopbackHubServer(port=args.port, verbose=args.verbose).start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
