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
>>> from hf_videomoe.testing import LoopbackHubServer
>>> with LoopbackHubServer() as server:
...     server.fail("commit", status=500)                      # every commit answers HTTP 500
...     server.fail("commit", drop=True, repo_id="me/flaky")    # commits to me/flaky drop the connection
...     # run the client in a subprocess with env=server.client_env(tmp_dir) (huggingface_hub reads HF_ENDPOINT at import)
```

The server keeps everything in memory; it does no authentication (tokens are accepted and ignored). It can also run
on its own: ``python -m hf_videomoe.testing.hub_server --port 0`` prints ``http://127.0.0.1:PORT`` and serves until
interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import time
from http.server import ThreadingHTTPServer

from .hub_protocol import ENDPOINTS, FailureMode, HubRepository, HubRequestHandler, git_blob_sha1

__all__ = ["FailureMode", "LoopbackHubServer", "git_blob_sha1"]


#: Variables that put a Hub cache or token somewhere other than under ``HF_HOME`` (huggingface_hub and transformers).
_CACHE_LOCATION_VARIABLES = frozenset(
    {
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "HF_XET_CACHE",
        "HF_TOKEN_PATH",
        "HF_MODULES_CACHE",
        "TRANSFORMERS_CACHE",
    }
)


class _ThreadingServer(ThreadingHTTPServer):
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
        self.repos: dict[str, HubRepository] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[FailureMode] = []
        self._lock = threading.RLock()
        self._server: _ThreadingServer | None = None
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
        self._server = _ThreadingServer((self.host, self.port), HubRequestHandler)
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

    def client_env(self, hf_home: str | os.PathLike, **extra: str) -> dict[str, str]:
        """The environment of a subprocess that talks to this server and to nothing else.

        ``os.environ`` with ``HF_ENDPOINT`` pointing at [`url`], ``HF_HUB_OFFLINE=0`` (a test suite's offline switch
        is lifted for that process only), every Hub cache and token location under ``hf_home`` (variables such as
        ``HF_HUB_CACHE`` or ``HF_TOKEN_PATH`` that would override ``HF_HOME`` are dropped, so a loopback download
        never lands in the developer's cache, which is keyed by repo id and not by endpoint), ``HF_TOKEN=test-token``
        in place of any real token (the server accepts every token), ``NO_PROXY`` for loopback and telemetry off.

        Args:
            hf_home: the subprocess's ``HF_HOME``, e.g. a folder under pytest's ``tmp_path``.
            extra: variables to add or override, e.g. ``OMP_NUM_THREADS="1"``.

        Returns:
            A dict for ``subprocess.run(..., env=...)``.
        """
        inherited = {name: value for name, value in os.environ.items() if name not in _CACHE_LOCATION_VARIABLES}
        return {
            **inherited,
            "HF_ENDPOINT": self.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(hf_home),
            "HF_TOKEN": "test-token",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            **extra,
        }

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
        if endpoint not in ENDPOINTS:
            raise ValueError(f"Unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}.")
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

    def take_failure(self, endpoint: str, repo_id: str | None) -> FailureMode | None:
        """The first injected failure that matches a request to ``endpoint`` for ``repo_id``, or ``None``.

        Counts as one use of the failure (a mode registered with ``times=n`` matches ``n`` requests): the request
        handler calls it once per request, before answering.
        """
        with self._lock:
            for mode in self.failures:
                if mode.matches(endpoint, repo_id):
                    if mode.times is not None:
                        mode.times -= 1
                    return mode
        return None

    # -- state ----------------------------------------------------------------------------------------------------
    def record_request(self, method: str, path: str) -> None:
        """Append ``(method, path)`` to ``requests``; the request handler calls it for every request it serves."""
        with self._lock:
            self.requests.append((method, path))

    def create_repo(self, repo_id: str, private: bool = False) -> bool:
        """Create ``repo_id`` with an initial commit (what ``POST /api/repos/create`` does, also usable directly to
        prepare a test). Returns ``False``, changing nothing, if the repository already exists."""
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = HubRepository(repo_id=repo_id, private=private)
            self.add_commit(
                repo, "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            )
            self.repos[repo_id] = repo
            return True

    def add_commit(self, repo: HubRepository, title: str, files: dict[str, bytes]) -> str:
        """Make ``files`` the whole content of ``repo``'s ``main`` in a new commit titled ``title``; returns its id.

        Commit ids are unique per call (they hash the time as well as the content), like the Hub's.
        """
        with self._lock:
            seed = f"{repo.repo_id}\n{len(repo.commits)}\n{title}\n{time.time_ns()}".encode()
            digest = hashlib.sha1(seed)
            for name in sorted(files):
                digest.update(name.encode() + b"\0" + git_blob_sha1(files[name]).encode())
            oid = digest.hexdigest()
            repo.files = dict(files)
            repo.commits.append({"oid": oid, "title": title, "files": dict(files)})
            return oid

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Files of ``repo_id`` at ``revision`` (``{}`` if the repo does not exist)."""
        repo = self.repos.get(repo_id)
        return dict(repo.files_at(revision) or {}) if repo else {}

    def commits(self, repo_id: str) -> list[dict]:
        """Commits of ``repo_id``, oldest first: ``{"oid", "title", "files"}``."""
        repo = self.repos.get(repo_id)
        return list(repo.commits) if repo else []


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted: ``python -m hf_videomoe.testing.hub_server [--port PORT] [--verbose]``."""
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
