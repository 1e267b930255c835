"""Push a robust checkpoint, its robustness report, plots and model card to the Hub in one commit."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import validate_repo_id

from ..evaluation.report import RobustnessReport
from .model_card import build_model_card

__all__ = ["HubUploadError", "prepare_robust_checkpoint", "push_robust_checkpoint"]

REPORT_FILENAME = "report.json"
REPORT_MARKDOWN_FILENAME = "robustness_report.md"
PLOTS_DIR = "plots"


class HubUploadError(RuntimeError):
    """The upload to the Hub failed; the prepared checkpoint folder is kept (``local_dir``)."""

    def __init__(self, message: str, *, repo_id: str, local_dir: Path):
        super().__init__(message)
        self.repo_id = repo_id
        self.local_dir = local_dir


def _unwrap(model):
    # DistributedDataParallel / accelerate wrappers keep the real model in `.module`.
    while hasattr(model, "module") and not hasattr(model, "save_pretrained"):
        model = model.module
    return model


def prepare_robust_checkpoint(
    model,
    report: RobustnessReport,
    local_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    plots: bool = True,
    **card_kwargs: Any,
) -> list[Path]:
    """Write everything a robust checkpoint repo holds into ``local_dir`` and return the written files.

    Layout: ``config.json`` + ``model.safetensors`` (``save_pretrained``), ``README.md`` (the model card),
    ``report.json`` (the full [`RobustnessReport`]), ``robustness_report.md`` and ``plots/*.png`` (when ``plots``).
    ``card_kwargs`` go to [`build_model_card`].
    """
    model = _unwrap(model)
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"push_robust_checkpoint needs a transformers model with save_pretrained, got {type(model).__name__}."
        )
    if not isinstance(report, RobustnessReport):
        raise TypeError(f"report must be a RobustnessReport, got {type(report).__name__}.")
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    before = {p for p in local_dir.rglob("*") if p.is_file()}

    save_kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(local_dir, **save_kwargs)
    model_files = {p for p in local_dir.rglob("*") if p.is_file()} - before
    model_files |= {p for p in local_dir.glob("*.safetensors")} | {
        p for p in local_dir.glob("*.safetensors.index.json")
    }
    model_files |= {p for p in (local_dir / "config.json",) if p.exists()}
    if not any(p.suffix == ".safetensors" for p in model_files):
        raise RuntimeError(f"save_pretrained wrote no .safetensors file into {local_dir}.")

    written = sorted(model_files)
    written.append(report.save(local_dir / REPORT_FILENAME))
    md_path = local_dir / REPORT_MARKDOWN_FILENAME
    md_path.write_text(report.to_markdown(), encoding="utf-8")
    written.append(md_path)
    plot_paths: dict[str, Path] = {}
    if plots:
        plot_paths = report.plot(local_dir / PLOTS_DIR)
        written.extend(plot_paths.values())
    card = build_model_card(report, repo_id=repo_id, plots=plot_paths, plots_relative_to=local_dir, **card_kwargs)
    readme = local_dir / "README.md"
    card.save(readme)
    written.append(readme)
    return sorted(set(written))


def push_robust_checkpoint(
    model,
    repo_id: str,
    report: RobustnessReport,
    *,
    token: str | bool | None = None,
    private: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    plots: bool = True,
    local_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    timeout: float | None = 300.0,
    max_retries: int = 2,
    **card_kwargs: Any,
):
    """Save a robust checkpoint with its robustness report, plots and model card, then upload them in one commit.

    Everything is first written to a local folder (``local_dir``, or a temporary folder removed after a successful
    upload): the model (``save_pretrained``: ``config.json`` + safetensors weights), ``README.md`` (the card from
    [`build_model_card`], with ``model-index`` robustness metrics), ``report.json``, ``robustness_report.md`` and
    ``plots/*.png``. The repo is created if needed (``exist_ok=True``) and all files go up in a single commit, so the
    repo never holds weights without their card and report.

    Args:
        model: a transformers model (``VideoMAEMoeForVideoClassification``, ...), possibly wrapped in DDP.
        repo_id: ``"namespace/name"``; validated before anything is written.
        report: the [`RobustnessReport`] of this model.
        token: Hub token (defaults to the logged-in one).
        private: create the repo private.
        commit_message / commit_description: of the upload commit.
        plots: render and upload the report's plots.
        local_dir: where to prepare the files (kept afterwards); default: a temporary folder.
        revision: branch to commit to (default ``main``).
        endpoint: Hub endpoint (defaults to ``HF_ENDPOINT`` / huggingface.co).
        timeout: seconds each Hub request other than the file uploads (creating the repository, reading its head,
            the commit itself) may take before it is abandoned and retried; ``None`` waits forever. The uploads of
            large files run without a deadline (they take as long as the checkpoint is large) but are retried on
            transient errors. huggingface_hub's own client has no timeout, so a server that accepts the connection
            and never answers would otherwise hang the push.
        max_retries: further attempts of a Hub call after a timeout, a dropped connection or a 5xx answer (with
            1 s, 2 s, 4 s ... between them); a 4xx answer is not retried.
        card_kwargs: more [`build_model_card`] arguments (``model_name``, ``base_model``, ``dataset_name``,
            ``training_recipe``, ``dataset_kwargs``, ``tags``, ...).

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit (a ``str`` subclass: the commit URL).

    Raises:
        ValueError: an invalid ``repo_id`` (before any work).
        HubUploadError: (a ``RuntimeError``) the Hub refused or the connection failed; the message names the repo and
            the folder where the checkpoint and report are kept.
    """
    validate_repo_id(repo_id)
    if commit_message is not None and not commit_message.strip():
        raise ValueError("commit_message must not be empty.")
    if not isinstance(report, RobustnessReport):
        raise TypeError(f"report must be a RobustnessReport, got {type(report).__name__}.")
    temporary = local_dir is None
    folder = Path(tempfile.mkdtemp(prefix="hf_videomoe_push_")) if temporary else Path(local_dir)
    files = prepare_robust_checkpoint(model, report, folder, repo_id=repo_id, plots=plots, **card_kwargs)

    if commit_message is None:
        commit_message = (
            f"Upload robust checkpoint (worst-case robust accuracy {100 * report.worst_case_accuracy:.1f} %, "
            f"clean {100 * report.clean_accuracy:.1f} %)"
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
    ):
        raise ValueError(f"timeout must be a positive finite number of seconds or None, got {timeout!r}.")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}.")
    api = HfApi(endpoint=endpoint, token=token)
    target = f"{api.endpoint}/{repo_id}"
    stage = "creating the repository"

    def call(fn, *args, **kwargs):
        return _call_with_retries(functools.partial(fn, *args, **kwargs), timeout, max_retries)

    try:
        repo_url = call(api.create_repo, repo_id, private=private, exist_ok=True, repo_type="model")
        canonical_id = getattr(repo_url, "repo_id", None) or repo_id
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in files
        ]
        # The head before the commit: a retried commit whose first attempt did land is refused (parent changed)
        # instead of committing twice.
        parent = call(api.repo_info, canonical_id, repo_type="model", revision=revision).sha
        stage = f"uploading {len(operations)} files"
        _call_with_retries(
            functools.partial(
                api.preupload_lfs_files, canonical_id, additions=operations, repo_type="model", revision=revision
            ),
            None,
            max_retries,
        )
        stage = f"committing {len(operations)} files"
        info = call(
            api.create_commit,
            parent_commit=parent,
            repo_id=canonical_id,
            repo_type="model",
            operations=operations,
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
        )
    except Exception as err:  # HfHubHTTPError, httpx transport errors, OSError, ...
        raise HubUploadError(
            f"Upload of the robust checkpoint ({len(files)} files) to {target} failed while {stage}: "
            f"{type(err).__name__}: {err}; your checkpoint and report are kept in {folder}",
            repo_id=repo_id,
            local_dir=folder,
        ) from err
    if temporary:
        shutil.rmtree(folder, ignore_errors=True)
    return info


def _is_transient(err: BaseException) -> bool:
    """Timeouts, dropped or stalled connections, 429 and 5xx answers are worth another try; anything else (4xx,
    offline mode, a missing token, local file errors) would fail the same way again."""
    import httpx2  # huggingface_hub's HTTP client

    if isinstance(err, (TimeoutError, httpx2.TransportError)):
        return True
    status = getattr(getattr(err, "response", None), "status_code", None)
    return status is not None and (int(status) == 429 or int(status) >= 500)


def _call_with_retries(fn, timeout: float | None, max_retries: int):
    """``fn()`` with a deadline and bounded retries.

    huggingface_hub's HTTP client is process-wide and has no timeout; changing it would change every other Hub call
    of the user's process, so each call runs in a daemon thread that is abandoned at the deadline instead.
    """
    for attempt in range(max_retries + 1):
        outcome: dict[str, Any] = {}

        def run():
            try:
                outcome["value"] = fn()
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        worker = threading.Thread(target=run, name="hf_videomoe-hub-call", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            error: BaseException = TimeoutError(f"no answer from the Hub within {timeout:g} s")
        elif "error" in outcome:
            error = outcome["error"]
        else:
            return outcome.get("value")
        if attempt == max_retries or not _is_transient(error):
            raise error
        time.sleep(min(2**attempt, 30))
    raise AssertionError("unreachable")
