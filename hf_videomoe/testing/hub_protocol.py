"""The Hub HTTP protocol subset the loopback server speaks: repositories, request routing, injected failures
(see `hf_videomoe.testing.hub_server`)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["ENDPOINTS", "FailureMode", "HubRepository", "HubRequestHandler", "git_blob_sha1"]

ENDPOINTS = ("create", "validate", "preupload", "commit", "info", "tree", "paths-info", "resolve", "*")


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
class HubRepository:
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


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer  # with a `hub` attribute: the LoopbackHubServer

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
        failure = self.server.hub.take_failure(endpoint, repo_id)
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
        self.server.hub.record_request(self.command, self.path)
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
        created = self.server.hub.create_repo(repo_id, private=payload.get("visibility") == "private")
        if not created:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo: HubRepository, payload: dict) -> None:
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

    def _commit(self, repo: HubRepository, revision: str, body: bytes) -> None:
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
        oid = self.server.hub.add_commit(repo, header.get("summary", ""), new_files)
        self._send(
            200,
            {
                "commitUrl": f"{self.server.hub.url}/{repo.repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            },
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

    def _paths_info(self, repo: HubRepository, revision: str, body: bytes) -> None:
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
                headers={
                    "X-Error-Code": "EntryNotFound",
                    "X-Error-Message": "Entry not found",
                    "X-Repo-Commit": commit,
                },
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
