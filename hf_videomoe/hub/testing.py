"""Moved to [`hf_videomoe.testing`]; this alias keeps old imports working and will be removed in a later release."""

import warnings

from ..testing import FailureMode, LoopbackHubServer, git_blob_sha1

warnings.warn(
    "hf_videomoe.hub.testing moved to hf_videomoe.testing; import LoopbackHubServer from there.",
    FutureWarning,
    stacklevel=2,
)

__all__ = ["FailureMode", "LoopbackHubServer", "git_blob_sha1"]
