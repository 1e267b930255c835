"""Output folders written as a whole: a lock file names the run that is writing, the files are written into a hidden
staging folder beside the target and moved into place only when all of them are complete. Two runs into one folder
end with one complete, consistent result; the second gets an error naming the first."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["EVALUATE_OUTPUTS", "OutputFolderBusyError", "staged_output_folder"]

#: What ``hf-videomoe evaluate`` writes into its output folder (a later run removes the ones it does not rewrite).
EVALUATE_OUTPUTS = (
    "report.json",
    "report.md",
    "README.md",
    "eps_sweep.png",
    "expert_usage.png",
    "perturbation_energy.png",
)


class OutputFolderBusyError(FileExistsError):
    """Another run holds the output folder's lock."""


def _lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def _holder_is_gone(holder: dict) -> bool:
    """Whether the lock's holder is a process of this machine that no longer runs (a crashed run)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _acquire(folder: Path, what: str) -> Path:
    lock = _lock_path(folder)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                current = json.loads(lock.read_text())
            except (OSError, ValueError):
                current = {}
            if isinstance(current, dict) and _holder_is_gone(current):
                warnings.warn(
                    f"Removing the stale lock {lock} of a run that no longer exists ({current}).", stacklevel=4
                )
                lock.unlink(missing_ok=True)
                continue
            who = (
                (
                    f"{current.get('what', 'a run')} (pid {current.get('pid')} on {current.get('host')} since "
                    f"{current.get('since')})"
                )
                if isinstance(current, dict) and current
                else "another run"
            )
            raise OutputFolderBusyError(
                f"output folder {folder} is being written by {who}; expected a folder no other run is writing: wait "
                f"for it, choose another output folder, or delete {lock} if that run is gone."
            ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        return lock
    raise OutputFolderBusyError(f"output folder {folder}: could not take its lock {lock}.")


def _move_into_place(staging: Path, folder: Path, owned_names: Iterable[str]) -> None:
    if not folder.exists():
        os.replace(staging, folder)  # one rename: the folder appears complete or not at all
        return
    written = {p.name for p in staging.iterdir()}
    for name in set(owned_names) - written:  # files of an earlier run that this one does not produce
        (folder / name).unlink(missing_ok=True)
    for path in sorted(staging.iterdir()):
        target = folder / path.name
        if path.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
    staging.rmdir()


@contextlib.contextmanager
def staged_output_folder(
    folder: str | os.PathLike, *, what: str = "hf-videomoe", owned_names: Iterable[str] = ()
) -> Iterator[Path]:
    """Lock ``folder`` for this run and yield a staging folder to write into; on success the staged files replace
    the folder's (``owned_names``: files an earlier run may have left that this run would otherwise leave stale).

    A second run into the same folder gets `OutputFolderBusyError` (an `OSError`) naming the holder at once,
    before doing any work; a lock left by a crashed process of this machine is taken over with a warning. On an
    error the staging folder is removed and the folder is left as it was.
    """
    folder = Path(folder).absolute()
    created = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = _acquire(folder, what)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the output folder's mode
    done = False
    try:
        yield staging
        _move_into_place(staging, folder, owned_names)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.unlink(missing_ok=True)
        for path in created if not done else ():  # a failed run (e.g. a wrong --model) leaves no empty folders
            with contextlib.suppress(OSError):
                path.rmdir()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
