"""Reproducible mode: the same run gives the same weights, bit for bit, on any x86-64 CPU.

torch dispatches its CPU kernels by the CPU's vector width (``ATEN_CPU_CAPABILITY``), MKL and oneDNN pick their own
code paths (``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``), numpy dispatches its float functions too
(``NPY_DISABLE_CPU_FEATURES``), and reductions split across threads add in another order. Training amplifies the
last bit, so the same seed gives other weights, and other accuracies, on another machine. Reproducible mode pins all
of them to the code paths every x86-64 CPU has, uses one thread and turns on ``torch.use_deterministic_algorithms``.

Those libraries read their variables once, when they are imported or run their first kernel, so the switch must act
before that. It does so in one of two ways:

- The environment variable ``HF_VIDEOMOE_REPRODUCIBLE=1``: importing ``hf_videomoe`` pins the variables in place
  when neither torch nor numpy has been imported yet (the ``hf-videomoe`` command, any script that imports
  ``hf_videomoe`` first), and otherwise restarts the process as below, so it works for every entry point.
- :func:`enable_reproducible_mode` (``--reproducible`` on ``hf-videomoe demo`` and ``scripts/reproduce_paper.py``):
  when torch or numpy is already loaded it restarts the process (``os.execve`` with the same command line and the
  pinned environment) so that the pins take effect; in an interactive session or under pytest, where a restart is
  not possible, it pins what it still can and says which parts did not take effect.

Either way :func:`reproducibility_record` tells what is pinned and what took effect; runs store it in their metadata,
next to the :func:`weights_sha256` fingerprint of each trained model.

Usage in a command (the ``train`` subcommand calls it with its ``--reproducible`` flag)::

    from hf_videomoe.reproducibility import enable_reproducible_mode
    record = enable_reproducible_mode(args.reproducible)   # may restart the process; call it before any work

The cost is time: the portable kernels are slower than the machine's own (docs/DEMO_SEEDS.md measures the demo).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import Any

__all__ = [
    "ENV_VAR",
    "enable_reproducible_mode",
    "pinned_environment",
    "reproducibility_record",
    "reproducible_mode_requested",
    "weights_sha256",
]

ENV_VAR = "HF_VIDEOMOE_REPRODUCIBLE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Set in the restarted process so that it never restarts again.
_RESTARTED = "HF_VIDEOMOE_REPRODUCIBLE_RESTARTED"

# numpy >= 2.4 groups its x86 dispatch targets (baseline X86_V2); older numpy lists single features (baseline SSE3).
# Names numpy does not know are ignored; a baseline name is an error, so each list holds dispatch targets only.
_NUMPY_DISPATCH_X86 = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"
_NUMPY_DISPATCH_X86_LEGACY = (
    "SSSE3 SSE41 POPCNT SSE42 AVX F16C FMA3 AVX2 AVX512F AVX512CD AVX512_KNL AVX512_KNM "
    "AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
)

_state: dict[str, Any] = {"enabled": False, "record": None}


def reproducible_mode_requested() -> bool:
    """Whether ``HF_VIDEOMOE_REPRODUCIBLE`` asks for reproducible mode (``1``/``true``/``yes``/``on``)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value not in _TRUE | _FALSE:
        warnings.warn(
            f"{ENV_VAR}={value!r} is not one of 1/0/true/false/yes/no/on/off; reproducible mode stays off", stacklevel=2
        )
    return value in _TRUE


def _is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


def _numpy_simd() -> dict[str, list[str]]:
    """numpy's dispatch targets: ``baseline``, ``found`` (in use) and ``not found`` (absent or disabled)."""
    import numpy

    try:
        return numpy.show_config(mode="dicts").get("SIMD Extensions", {})
    except TypeError:  # numpy < 1.26 has no mode="dicts"
        return {}


def _numpy_dispatch_targets() -> str:
    if "numpy" in sys.modules:
        simd = _numpy_simd()
        return " ".join([*simd.get("found", []), *simd.get("not found", [])])
    try:
        from importlib.metadata import version

        major, minor = (int(part) for part in version("numpy").split(".")[:2])
    except Exception:  # no numpy metadata: assume a current numpy
        major, minor = 2, 4
    return _NUMPY_DISPATCH_X86 if (major, minor) >= (2, 4) else _NUMPY_DISPATCH_X86_LEGACY


def pinned_environment() -> dict[str, str]:
    """The environment variables reproducible mode sets (overriding values exported for them).

    - ``ATEN_CPU_CAPABILITY=default``: torch's portable kernels instead of the AVX2 / AVX-512 ones;
    - ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the code path every x86-64 CPU runs;
    - ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN's lowest instruction set;
    - ``NPY_DISABLE_CPU_FEATURES``: numpy's dispatched (above-baseline) float loops off;
    - ``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1``: one thread, one summation order;
    - ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: what deterministic cuBLAS needs on a GPU.
    """
    env = {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "ATEN_CPU_CAPABILITY": "default",
    }
    if _is_x86():
        env.update(
            {
                "MKL_CBWR": "COMPATIBLE",
                "ONEDNN_MAX_CPU_ISA": "SSE41",
                "NPY_DISABLE_CPU_FEATURES": _numpy_dispatch_targets(),
            }
        )
    return env


def _effective() -> dict[str, Any]:
    """What took effect in this process (only for libraries already loaded: loading one here would fix its paths)."""
    out: dict[str, Any] = {}
    if "torch" in sys.modules:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    if "numpy" in sys.modules:
        out["numpy_dispatch_enabled"] = sorted(_numpy_simd().get("found", []))
    return out


def reproducibility_record() -> dict[str, Any]:
    """What this process pinned, for a run's metadata: ``enabled``, ``environment`` (the pinned variables as this
    process sees them), ``effective`` (torch's CPU capability, threads, deterministic algorithms, numpy's enabled
    dispatch targets), ``complete`` (every pin took effect) and ``problems`` (those that did not)."""
    record = dict(_state["record"] or {"enabled": False})
    record["enabled"] = _state["enabled"]
    keys = list(pinned_environment())
    record["environment"] = {key: os.environ.get(key) for key in keys}
    record["effective"] = _effective()
    record["machine"] = platform.machine()
    if _state["enabled"]:
        problems = []
        effective = record["effective"]
        if effective.get("torch_cpu_capability", "DEFAULT") != "DEFAULT":
            problems.append(f"torch runs its {effective['torch_cpu_capability']} kernels (a kernel ran before the pin)")
        if effective.get("numpy_dispatch_enabled"):
            problems.append(
                f"numpy dispatches {' '.join(effective['numpy_dispatch_enabled'])} (imported before the pin)"
            )
        if "torch_num_threads" in effective and effective["torch_num_threads"] != 1:
            problems.append(f"torch uses {effective['torch_num_threads']} threads")
        problems.extend(record.get("late", []))
        record["problems"] = problems
        record["complete"] = not problems
    return record


def _set_environment() -> None:
    # Values the caller exported for these variables are overridden: the same values everywhere are the point.
    os.environ.update(pinned_environment())


def _apply_torch_state() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op parallel work
        pass
    torch.use_deterministic_algorithms(True, warn_only=True)


def _can_restart() -> bool:
    interactive = hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules
    return (
        not interactive
        and "pytest" not in sys.modules
        and os.environ.get(_RESTARTED) != "1"
        and bool(getattr(sys, "orig_argv", None))
    )


def enable_reproducible_mode(enabled: bool | None = True, *, restart: bool | None = None) -> dict[str, Any]:
    """Turn on reproducible mode for this process and return :func:`reproducibility_record`.

    ``enabled``: ``True`` turns it on, ``False`` leaves the process as it is (the record then says it is off),
    ``None`` follows ``HF_VIDEOMOE_REPRODUCIBLE``. Call it first thing in a command, before any model or data work.

    ``restart``: when torch or numpy is already loaded, the pins only take effect in a fresh process, so by default
    (``None``) the process restarts itself with the same command line and the pinned environment (``os.execve``:
    this call then does not return) unless it runs interactively or under pytest; ``False`` never restarts (the
    record then lists what did not take effect), ``True`` restarts whenever something is loaded.
    """
    if enabled is None:
        enabled = reproducible_mode_requested()
    if not enabled:
        if _state["enabled"]:
            warnings.warn(
                f"reproducible mode was already turned on ({ENV_VAR}=1); it cannot be turned off in a running process",
                stacklevel=2,
            )
        return reproducibility_record()
    if _state["enabled"]:
        return reproducibility_record()
    loaded = [name for name in ("torch", "numpy") if name in sys.modules]
    differs: list[str] = []
    if loaded:
        wanted = pinned_environment()
        differs = [key for key, value in wanted.items() if os.environ.get(key) != value]
        if differs and (restart or (restart is None and _can_restart())):
            env = dict(os.environ)
            env.update(wanted)
            env[ENV_VAR] = "1"
            env[_RESTARTED] = "1"
            sys.stdout.flush()
            sys.stderr.flush()
            print(
                f"hf_videomoe: reproducible mode: restarting the process with {' '.join(differs)} pinned "
                f"({', '.join(loaded)} already loaded)",
                file=sys.stderr,
                flush=True,
            )
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    late = []
    if loaded and differs:
        late = [
            f"{' '.join(differs)} set after {' and '.join(loaded)} had been loaded (MKL and oneDNN may already "
            "have chosen their code paths)"
        ]
    _set_environment()
    os.environ[ENV_VAR] = "1"  # child processes (DataLoader workers, torchrun ranks) follow
    _state["enabled"] = True
    _state["record"] = {"late": late} if late else {}
    if "torch" in sys.modules:
        _apply_torch_state()
    return reproducibility_record()


def apply_environment_switch() -> None:
    """Called when ``hf_videomoe`` is imported: honour ``HF_VIDEOMOE_REPRODUCIBLE=1`` (in place when torch and numpy
    are not loaded yet, else by restarting the process where that is possible)."""
    if reproducible_mode_requested() and not _state["enabled"]:
        record = enable_reproducible_mode(True)
        if not record["complete"]:
            warnings.warn(
                f"{ENV_VAR}=1, but not every pin took effect: {'; '.join(record['problems'])}. Import "
                "hf_videomoe before torch and numpy, or export the variables of "
                "hf_videomoe.reproducibility.pinned_environment() before starting Python.",
                stacklevel=3,
            )


def apply_torch_pins() -> None:
    """Apply the torch-side pins (threads, deterministic algorithms) once torch is loaded, if the mode is on."""
    if _state["enabled"] and "torch" in sys.modules:
        _apply_torch_state()


def weights_sha256(model) -> str:
    """SHA-256 over a model's state dict (or a state dict): every tensor in name order, its name, shape and dtype,
    then its bytes.

    The same fingerprint as ``hf_videomoe.evaluation.state.model_fingerprint`` (the evaluator's resume state, the
    reproduction's ``train.json``); two runs agree on it only when their weights agree bit for bit."""
    import hashlib

    import torch

    state = model if isinstance(model, dict) else model.state_dict()
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        data = tensor.detach().cpu().contiguous()
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
