"""Test helpers shipped with the library: a Hub-compatible loopback server for offline push / download tests."""

from .hub_server import FailureMode, LoopbackHubServer, git_blob_sha1

__all__ = ["FailureMode", "LoopbackHubServer", "git_blob_sha1"]
