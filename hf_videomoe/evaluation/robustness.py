"""``evaluate_robustness``: clean, per-attack and worst-case accuracy of a video classifier, with routing diagnostics,
an ε sweep, reliability flags and inference cost, resumable and shardable across Accelerate processes.

How the numbers are defined
---------------------------
* A sample is **robust to an attack** when it is classified correctly clean *and* under that attack.
  ``robust_accuracy[a]`` is the fraction of *all* evaluated samples robust to ``a``.
* **Worst case** is the per-sample AND over all attacks (AutoAttack-style: a sample counts only if no attack fools
  it). Because individual accuracies are needed anyway, every attack runs on every sample (instead of only on the
  samples still standing), and the worst case is computed afterwards from the per-sample results. Hence, per sample,
  ``worst case <= every single attack <= clean``.
* **Routing change** is 1 − IoU of the selected-expert sets (top-k per routing unit), clean vs adversarial, averaged
  over units, then samples; per MoE layer and over all layers. **Lips-R** is MSE(R(x), R(x+δ)) / MSE(x, x+δ) on router
  probabilities (all MoE layers and units), averaged over samples. Both are computed per sample from the router logits
  of the clean and adversarial forward passes (the same definitions as ``hf_videomoe.attacks.diagnostics``, which
  return batch means), so that sharded and resumed runs aggregate exactly.
* **Perturbation energy** per frame f is ‖δ_f‖² (sum over channels and pixels), averaged over samples.

Reproducibility
---------------
The data is cut into global batches of ``batch_size`` consecutive samples. Before every attack call the global RNG
is reseeded from ``(seed, batch index, attack)``, so a batch's results do not depend on which process evaluates it,
on which other attacks run, or on whether the run was resumed. Under Accelerate, process ``r`` of ``w`` evaluates
batches ``k`` with ``k % w == r`` (every batch keeps its composition, so the sharded report is identical to the
single-process one), per-batch results are gathered with ``accelerate.utils.gather_object`` and every process returns
the same report.

With ``state_dir``, each finished batch is written atomically to ``state_dir/batches/batch_XXXXXXX.json`` (plain
JSON, never pickle) next to ``state_dir/settings.json``; rerunning with the same settings skips finished batches and
produces the identical report, with different settings it raises ``ValueError`` listing the differences.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..moe import (
    frozen_routing_predictions,
    is_moe_model,
    moe_blocks,
    record_routing,
    relevance_predictions,
    summarize_relevance,
)
from ._data import Batch, DataSource, make_source, sample_shape
from .flags import BLACK_BOX_ATTACKS, FlagThresholds, compute_flags
from .report import RobustnessReport, atomic_write_text

__all__ = ["DEFAULT_ATTACKS", "evaluate_robustness"]

#: Attacks run when ``attacks=None``: three standard white-box attacks, the gradient-free Square (the gradient-masking
#: check needs it) and the paper's strongest MoE attack (dropped automatically for dense models).
DEFAULT_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "square", "j-tlga")
_STATE_FORMAT = 2  # 2: every batch file carries checksums of its record and of the settings


# ----------------------------------------------------------------------------------------------------------------------
# Attack resolution


@dataclass
class _AttackSpec:
    label: str
    attack: Any
    name: str
    kwargs: dict[str, Any] | None  # build_attack kwargs when built by name (None for user instances)
    white_box: bool
    variants: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        settings = self.attack.settings() if hasattr(self.attack, "settings") else {}
        return json.loads(json.dumps(settings, default=_json_default))

    def variant(self, **changes) -> Any:
        """The same attack with some settings changed (``eps`` for the sweep, ``steps`` for the steps check)."""
        key = json.dumps(changes, sort_keys=True)
        if key not in self.variants:
            self.variants[key] = _attack_variant(self, changes)
        return self.variants[key]


def _spec_eps(spec: _AttackSpec) -> float | None:
    value = (spec.kwargs or {}).get("eps", getattr(spec.attack, "eps", None))
    return None if value is None else float(value)


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _attacks_module():
    try:
        from .. import attacks as attacks_module
    except ImportError as err:  # pragma: no cover - only while the attacks package is missing
        raise ImportError(
            f"Building attacks by name needs hf_videomoe.attacks, which failed to import ({err}). Pass Attack "
            "instances instead."
        ) from err
    return attacks_module


def _attack_variant(spec: _AttackSpec, changes: dict[str, Any]) -> Any:
    if spec.kwargs is not None:  # built by name: rebuild with the changed settings (default step sizes rescale)
        return _attacks_module().build_attack(spec.name, **{**spec.kwargs, **changes})
    attack = spec.attack
    replace = getattr(attack, "replace", None)
    if callable(replace):
        return replace(**changes)
    if all(hasattr(attack, key) for key in changes):
        # A copy with the attribute changed: the library's attacks derive their default step size from eps / steps
        # on the fly, so it rescales; an explicit step size stays as given.
        clone = copy.deepcopy(attack)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone
    settings = spec.settings()
    try:
        module = _attacks_module()
        kwargs = {k: v for k, v in settings.items() if k != "name"}
        return module.build_attack(settings.get("name", spec.name), strict=False, **{**kwargs, **changes})
    except Exception as err:
        raise ValueError(
            f"Cannot derive a variant of attack {spec.label!r} with {changes}: it has no such attribute and cannot be "
            f"rebuilt from its settings() ({err}). Pass the attack by name to use eps_sweep / check_steps."
        ) from err


def _is_attack_instance(obj: Any) -> bool:
    return callable(getattr(obj, "perturb", None)) or (callable(obj) and hasattr(obj, "settings"))


def _resolve_attacks(
    attacks: Any,
    *,
    shared: dict[str, Any],
    extra: dict[str, Any],
    moe: bool,
) -> list[_AttackSpec]:
    """Turn the ``attacks`` argument into specs; every error (unknown name or option, duplicate label, MoE attack on
    a dense model) is raised here, before any data is touched."""
    if attacks is None:
        registry = _attacks_module().ATTACKS
        attacks = [a for a in DEFAULT_ATTACKS if moe or not registry[a].requires_moe]
    if isinstance(attacks, str) or _is_attack_instance(attacks):
        attacks = [attacks]
    if isinstance(attacks, Mapping):
        entries: list[tuple[str | None, Any]] = list(attacks.items())
    else:
        entries = [(None, a) for a in attacks]
    if not entries:
        raise ValueError("attacks is empty: give at least one attack name or Attack instance.")

    specs: list[_AttackSpec] = []
    used_extra: set[str] = set()
    for label, item in entries:
        if isinstance(item, (str, Mapping)) or item is None:
            module = _attacks_module()
            options = dict(item) if isinstance(item, Mapping) else {}
            raw_name = item if isinstance(item, str) else options.pop("name", label)
            if not raw_name:
                raise ValueError(f"Attack entry {item!r} has no name.")
            name = module.resolve_attack_name(raw_name)  # ValueError listing valid names for unknown ones
            cls = module.ATTACKS[name]
            accepted = set(cls.accepted_kwargs())
            unknown = sorted(set(options) - accepted)
            if unknown:
                raise ValueError(f"Attack {name!r} does not take {unknown}; it accepts {sorted(accepted)}.")
            if cls.requires_moe and not moe:
                raise ValueError(
                    f"Attack {name!r} targets MoE routers / experts, but the model has no MoE layer. Use attacks that "
                    f"apply to dense models: {', '.join(module.DENSE_ATTACKS)}."
                )
            base = dict(shared)
            if name in BLACK_BOX_ATTACKS:
                # Square's `steps` are queries (default 1000) and it has no step size: the gradient attacks' shared
                # steps / step size would cripple it. Configure it per attack: {"square": {"steps": 5000}}.
                base.pop("steps", None)
                base.pop("step_size", None)
            base.update({k: v for k, v in extra.items() if k in accepted})
            used_extra |= {k for k in extra if k in accepted}
            kwargs = {k: v for k, v in {**base, **options}.items() if v is not None and k in accepted}
            attack = module.build_attack(name, **kwargs)
            specs.append(_AttackSpec(label=(label or name).strip(), attack=attack, name=name, kwargs=kwargs,
                                     white_box=True))
        elif _is_attack_instance(item):
            name = str(getattr(item, "name", type(item).__name__)).lower()
            if getattr(item, "requires_moe", False) and not moe:
                raise ValueError(f"Attack {name!r} targets MoE routers / experts, but the model has no MoE layer.")
            specs.append(_AttackSpec(label=(label or name), attack=item, name=name, kwargs=None, white_box=True))
        else:
            raise TypeError(f"Attacks must be names, dicts of build_attack kwargs or Attack instances, got {item!r}.")
    unused = sorted(set(extra) - used_extra)
    if unused and any(s.kwargs is not None for s in specs):
        raise ValueError(f"attack_kwargs {unused} are not accepted by any of the attacks {[s.label for s in specs]}.")
    for spec in specs:
        spec.white_box = not (spec.name in BLACK_BOX_ATTACKS or getattr(spec.attack, "black_box", False))
    labels = [s.label for s in specs]
    duplicates = sorted({l for l in labels if labels.count(l) > 1})
    if duplicates:
        raise ValueError(
            f"Attack names must be unique, got {duplicates} more than once; pass a dict {{label: kwargs or Attack}} "
            "to evaluate variants of one attack."
        )
    return specs


# ----------------------------------------------------------------------------------------------------------------------
# Validation


def _check_eps(eps: Any, norm: str, what: str) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {eps!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive budget in pixel units (e.g. 8/255), got {eps!r}.")
    if norm == "linf" and value > 1:
        raise ValueError(
            f"{what}={eps!r} exceeds 1, the whole [0, 1] pixel range, for an L∞ budget; give ε in [0, 1] pixel units "
            f"(8/255 ≈ 0.031), not in 0-255 units."
        )
    return value


def _config_value(config, name):
    value = getattr(config, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0]
    return value


def _check_model_input(model: nn.Module, source: DataSource) -> None:
    config = getattr(model, "config", None)
    first = source.first_sample()
    shape = sample_shape(first)
    if len(shape) != 4:
        raise ValueError(
            f"Each sample's pixel_values must be (frames, channels, height, width), got shape {shape}."
        )
    if config is None:
        return
    frames, channels, size = (_config_value(config, k) for k in ("num_frames", "num_channels", "image_size"))
    if None in (frames, channels, size):
        return
    expected = (frames, channels, size, size)
    if tuple(shape) != expected:
        raise ValueError(
            f"Model/data mismatch: the dataset's pixel_values have shape (frames, channels, height, width) = {shape}, "
            f"but {type(model).__name__} expects {expected} (config.num_frames={frames}, num_channels={channels}, "
            f"image_size={size}). Resample / resize the clips (e.g. make_moving_shapes(num_frames={frames}, "
            f"image_size={size})) or evaluate a model built for this data."
        )


def _check_labels(labels: Sequence[int] | torch.Tensor, num_labels: int | None) -> None:
    if num_labels is None:
        return
    values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    bad = [v for v in values if not 0 <= int(v) < num_labels]
    if bad:
        raise ValueError(
            f"Labels must be class indices in [0, {num_labels}) for this model (config.num_labels={num_labels}), "
            f"found {sorted(set(bad))[:10]}."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Distributed helpers


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, records: list) -> list:
        if self.world == 1:
            return records
        from accelerate.utils import gather_object

        return gather_object(records)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def _resolve_distributed(accelerator: Any) -> _Dist:
    import os

    state = accelerator
    if state is None:
        try:
            from accelerate import PartialState
        except ImportError:  # pragma: no cover
            return _Dist()
        initialised = bool(getattr(PartialState, "_shared_state", {}))
        if not initialised and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return _Dist()
        if initialised:
            state = PartialState()
        else:
            # PartialState only sets up multi-CPU (gloo) runs when told to; mirror AcceleratorState's
            # ACCELERATE_USE_CPU flag and fall back to CPU when there is no accelerator.
            from accelerate.utils import parse_flag_from_env

            cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
            state = PartialState(cpu=cpu)
    world = int(getattr(state, "num_processes", 1))
    rank = int(getattr(state, "process_index", 0))
    return _Dist(world=world, rank=rank, state=state)


# ----------------------------------------------------------------------------------------------------------------------
# Resumable state


def _model_fingerprint(model: nn.Module) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        data = tensor.detach().cpu().contiguous()
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "weights_sha256": digest.hexdigest()}


def _diff_settings(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{path}: not in the saved state, now {current[key]!r}")
            elif key not in current:
                out.append(f"{path}: saved {saved[key]!r}, now absent")
            else:
                out.extend(_diff_settings(saved[key], current[key], path))
        return out
    return [] if saved == current else [f"{prefix}: saved {saved!r}, now {current!r}"]


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, allow_nan=True).encode()).hexdigest()


class _StateStore:
    """Per-batch JSON files under ``state_dir``; each carries a checksum of its record and of the settings it was
    computed with, so a file that is truncated, corrupt or edited is reported (with its path) and recomputed, never
    trusted."""

    def __init__(self, state_dir: str | Path, settings: dict[str, Any], dist: _Dist):
        self.root = Path(state_dir)
        self.batches_dir = self.root / "batches"
        self.settings_sha256 = _sha256(settings)
        settings_path = self.root / "settings.json"
        if dist.is_main:
            self.batches_dir.mkdir(parents=True, exist_ok=True)
            if not settings_path.exists():
                atomic_write_text(settings_path, json.dumps({"format": _STATE_FORMAT, "settings": settings}, indent=2))
        dist.barrier()
        try:
            saved = json.loads(settings_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{settings_path} is unreadable or not JSON ({err}); delete the state_dir to start over.")
        if not isinstance(saved, dict):
            raise ValueError(f"{settings_path} does not hold an evaluation's settings (got {type(saved).__name__}); "
                             "delete the state_dir to start over.")
        differences = _diff_settings(saved.get("settings"), settings)
        if saved.get("format") != _STATE_FORMAT or differences:
            raise ValueError(
                f"state_dir {str(self.root)!r} holds an evaluation with different settings, so its results cannot be "
                "reused:\n  - " + "\n  - ".join(differences or [f"state format {saved.get('format')}"]) +
                "\nUse a new state_dir (or delete this one) to start over."
            )

    def _path(self, index: int) -> Path:
        return self.batches_dir / f"batch_{index:07d}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        """The record in ``path``; `ValueError` saying what is wrong with the file otherwise."""
        try:
            envelope = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"unreadable or truncated ({type(err).__name__}: {err})") from err
        if not isinstance(envelope, dict) or not {"record", "record_sha256", "settings_sha256"} <= set(envelope):
            raise ValueError("not a batch file of this evaluator version (no checksums)")
        if envelope["settings_sha256"] != self.settings_sha256:
            raise ValueError("computed with other settings")
        if _sha256(envelope["record"]) != envelope["record_sha256"]:
            raise ValueError("its content does not match its checksum (edited or corrupt)")
        record = envelope["record"]
        missing = {"batch", "indices", "labels", "clean_pred", "attacks"} - set(record)
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        return record

    def done(self, rank: int = 0, world: int = 1) -> set[int]:
        """Indices of this rank's batches whose files are intact; the others are reported and set aside for
        recomputation (each rank checks only its own batches, so no two processes touch the same file)."""
        out = set()
        for path in sorted(self.batches_dir.glob("batch_*.json")):
            try:
                index = int(path.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if index % world != rank:
                continue
            try:
                record = self._read(path)
                if record["batch"] != index:
                    raise ValueError(f"it holds batch {record['batch']}")
            except ValueError as err:
                warnings.warn(f"Evaluation state file {path} is not trusted and will be recomputed: {err}.", stacklevel=3)
                try:
                    path.replace(path.with_suffix(".rejected"))
                except OSError:
                    pass
                continue
            out.add(index)
        return out

    def load(self, index: int) -> dict[str, Any]:
        return self._read(self._path(index))

    def save(self, record: dict[str, Any]) -> None:
        envelope = {"record": record, "record_sha256": _sha256(record), "settings_sha256": self.settings_sha256}
        atomic_write_text(self._path(record["batch"]), json.dumps(envelope, allow_nan=True))


# ----------------------------------------------------------------------------------------------------------------------
# Per-batch computation


class _Excluding:
    """A set-like "every batch index except these"."""

    def __init__(self, excluded: set[int]):
        self.excluded = excluded

    def __contains__(self, index: int) -> bool:
        return index not in self.excluded


def _derive_seed(seed: int, batch_index: int, tag: str) -> int:
    return (int(seed) * 1_000_003 + batch_index * 7_919 + zlib.crc32(tag.encode())) % (2**63 - 1)


def _accepts_kwarg(module: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _Evaluator:
    def __init__(self, model, specs, options):
        self.model = model
        self.specs = specs
        self.o = options
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.moe = is_moe_model(model)
        self.diagnostics = self.moe and options["diagnostics"]
        blocks = moe_blocks(model) if self.moe else []
        self.top_ks = [int(getattr(b, "top_k", 1)) for b in blocks]
        self.num_experts = [int(getattr(b, "num_experts", 0)) for b in blocks]
        self.forward_kwargs = {"output_router_logits": True} if self.moe and _accepts_kwarg(model, "output_router_logits") else {}

    # -- model calls ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values):
        with torch.no_grad():
            out = self.model(pixel_values=pixel_values, **self.forward_kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        router_logits = getattr(out, "router_logits", None) if self.diagnostics else None
        return logits.float(), router_logits

    def recorded_forward(self, pixel_values):
        """`forward`, plus the routing decisions of that pass when routing diagnostics run (else ``None``): the
        frozen-routing controls replay them instead of forwarding the same clips again."""
        if not self.diagnostics:
            return (*self.forward(pixel_values), None)
        with record_routing(self.model) as passes:
            logits, router_logits = self.forward(pixel_values)
        return logits, router_logits, passes[0]

    def attack(self, attack, x, y, batch_index, tag):
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(_derive_seed(self.o["seed"], batch_index, tag))
            if callable(getattr(attack, "perturb", None)):
                adv = attack.perturb(self.model, x, y)
            else:
                adv = attack(self.model, {"pixel_values": x, "labels": y})["pixel_values"]
        return adv.detach()

    def input_gradient_norms(self, x, y) -> torch.Tensor:
        x_req = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.model(pixel_values=x_req)
            logits = out.logits if hasattr(out, "logits") else out[0]
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            if not loss.requires_grad:
                return torch.zeros(len(y))
            (grad,) = torch.autograd.grad(loss, x_req, allow_unused=True)
        if grad is None:
            return torch.zeros(len(y))
        return grad.detach().flatten(1).norm(dim=1).float().cpu()

    # -- routing statistics ---------------------------------------------------------------------------------------
    def _top_ks(self, router_logits):
        if len(self.top_ks) == len(router_logits):
            return self.top_ks
        return [int(getattr(self.model.config, "num_experts_per_tok", 1))] * len(router_logits)

    def usage_counts(self, router_logits) -> list[list[int]]:
        out = []
        for logits, k in zip(router_logits, self._top_ks(router_logits)):
            selected = logits.topk(k, dim=-1).indices.flatten()
            out.append(torch.bincount(selected.cpu(), minlength=logits.shape[-1]).tolist())
        return out

    def routing_change(self, clean_rl, adv_rl) -> torch.Tensor:
        """(B, layers): 1 - mean IoU over units of the top-k expert sets."""
        per_layer = []
        for c, a, k in zip(clean_rl, adv_rl, self._top_ks(clean_rl)):
            sc = c.topk(k, dim=-1).indices
            sa = a.topk(k, dim=-1).indices
            inter = (sc.unsqueeze(-1) == sa.unsqueeze(-2)).any(-1).sum(-1).float()
            iou = inter / (2 * k - inter)
            per_layer.append(1.0 - iou.mean(dim=1))
        return torch.stack(per_layer, dim=1).cpu()

    @staticmethod
    def router_lipschitz(clean_rl, adv_rl, x, adv) -> list[float | None]:
        """Per-sample Lips-R (``hf_videomoe.attacks.objectives.router_lipschitz_ratio``); ``None`` for samples the
        attack left unchanged (no information on the ratio; left out of the mean, as in ``diagnostics``)."""
        from ..attacks.objectives import per_sample_mse, router_lipschitz_ratio

        ratio = router_lipschitz_ratio(clean_rl, adv_rl, x, adv).cpu().tolist()
        moved = (per_sample_mse(x, adv) > 0).cpu().tolist()
        return [r if m else None for r, m in zip(ratio, moved)]

    # -- one batch ------------------------------------------------------------------------------------------------
    def run_batch(self, batch: Batch) -> dict[str, Any]:
        o = self.o
        x = batch.pixel_values.to(self.device)
        y = batch.labels.to(self.device)
        k = batch.index
        record: dict[str, Any] = {"batch": k, "indices": batch.indices, "labels": batch.labels.tolist()}
        logits, clean_rl, clean_routing = self.recorded_forward(x)
        record["clean_pred"] = logits.argmax(-1).tolist()
        if o["check_determinism"]:
            logits2, _ = self.forward(x)
            record["determinism"] = {
                "max_abs_diff": float((logits - logits2).abs().max()) if logits.numel() else 0.0,
                "pred_changed": int((logits.argmax(-1) != logits2.argmax(-1)).sum()),
            }
        if o["check_gradients"]:
            norms = self.input_gradient_norms(x, y)
            record["grad_norm"] = [n if math.isfinite(n) else None for n in norms.tolist()]
        if self.diagnostics and clean_rl:
            record["clean_usage"] = self.usage_counts(clean_rl)
            record["relevance"] = relevance_predictions(self.model, x, seed=_derive_seed(o["seed"], k, "relevance"))

        record["attacks"] = {}
        for spec in self.specs:
            adv = self.attack(spec.attack, x, y, k, spec.label)
            adv_logits, adv_rl, adv_routing = self.recorded_forward(adv)
            delta = (adv.float() - x.float())
            entry: dict[str, Any] = {
                "pred": adv_logits.argmax(-1).tolist(),
                "energy_sum": delta.pow(2).sum(dim=(2, 3, 4)).double().sum(dim=0).tolist(),
                "linf": float(delta.abs().max()) if delta.numel() else 0.0,
            }
            if self.diagnostics and clean_rl and adv_rl:
                entry["routing_change"] = self.routing_change(clean_rl, adv_rl).tolist()
                entry["router_lipschitz"] = self.router_lipschitz(clean_rl, adv_rl, x, adv)
                entry["usage"] = self.usage_counts(adv_rl)
                entry["frozen_routing"] = frozen_routing_predictions(self.model, x, adv, clean_routing, adv_routing)
            record["attacks"][spec.label] = entry

        if o["eps_sweep"]:
            record["sweep"] = {}
            for spec in self.specs:
                if spec.label not in o["sweep_attacks"]:
                    continue
                preds = {}
                for eps in o["eps_sweep"]:
                    if eps == _spec_eps(spec):
                        continue  # same attack as the main run: its predictions are reused when aggregating
                    adv = self.attack(spec.variant(eps=eps), x, y, k, f"{spec.label}@eps={eps!r}")
                    preds[repr(eps)] = self.forward(adv)[0].argmax(-1).tolist()
                record["sweep"][spec.label] = preds

        if o["steps_check"]:
            subset = [i for i, idx in enumerate(batch.indices) if idx < o["steps_check_samples"]]
            if subset:
                record["steps_check"] = {}
                sel = torch.tensor(subset, device=self.device)
                for label, doubled in o["steps_check"].items():
                    spec = next(s for s in self.specs if s.label == label)
                    adv = self.attack(spec.variant(steps=doubled), x[sel], y[sel], k, f"{label}@steps={doubled}")
                    record["steps_check"][label] = {
                        "positions": subset,
                        "pred": self.forward(adv)[0].argmax(-1).tolist(),
                    }
        return record


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _aggregate(records: list[dict[str, Any]], specs: list[_AttackSpec], options: dict[str, Any]) -> dict[str, Any]:
    records = sorted(records, key=lambda r: r["batch"])
    labels = [l for r in records for l in r["labels"]]
    n = len(labels)
    clean = [p == l for r in records for p, l in zip(r["clean_pred"], r["labels"])]
    out: dict[str, Any] = {"num_samples": n, "clean_accuracy": sum(clean) / n}
    robust_per_sample: dict[str, list[bool]] = {}
    for spec in specs:
        preds = [p for r in records for p in r["attacks"][spec.label]["pred"]]
        robust_per_sample[spec.label] = [c and p == l for c, p, l in zip(clean, preds, labels)]
    out["robust_accuracy"] = {a: sum(v) / n for a, v in robust_per_sample.items()}
    worst = [all(v[i] for v in robust_per_sample.values()) for i in range(n)]
    out["worst_case_accuracy"] = sum(worst) / n

    # Perturbation energy per frame.
    out["perturbation_energy"] = {}
    for spec in specs:
        total = None
        for r in records:
            values = r["attacks"][spec.label]["energy_sum"]
            total = list(values) if total is None else [a + b for a, b in zip(total, values)]
        out["perturbation_energy"][spec.label] = [v / n for v in total]

    # Routing diagnostics.
    out["routing_change"], out["routing_change_per_layer"], out["router_lipschitz"], out["expert_usage"] = {}, {}, {}, {}
    if records and "clean_usage" in records[0]:

        def usage(key_fn):
            total = None
            for r in records:
                counts = key_fn(r)
                total = counts if total is None else [[a + b for a, b in zip(x, y)] for x, y in zip(total, counts)]
            return [[c / max(sum(layer), 1) for c in layer] for layer in total]

        out["expert_usage"]["clean"] = usage(lambda r: r["clean_usage"])
        for spec in specs:
            if "routing_change" not in records[0]["attacks"][spec.label]:
                continue
            per_sample = [row for r in records for row in r["attacks"][spec.label]["routing_change"]]
            num_layers = len(per_sample[0]) if per_sample else 0
            out["routing_change_per_layer"][spec.label] = [_mean([row[i] for row in per_sample]) for i in range(num_layers)]
            out["routing_change"][spec.label] = _mean([_mean(row) for row in per_sample])
            lips = [v for r in records for v in r["attacks"][spec.label]["router_lipschitz"] if v is not None]
            out["router_lipschitz"][spec.label] = _mean(lips) if lips else 0.0
            out["expert_usage"][spec.label] = usage(lambda r, a=spec.label: r["attacks"][a]["usage"])

    # Routing relevance (learned vs random routing, forced paths) and frozen-routing controls per attack; records
    # written by a version without them (a resumed state_dir) leave these empty.
    out["routing_relevance"], out["frozen_routing"] = None, {}
    if records and all("relevance" in r for r in records):
        clean_preds = [p for r in records for p in r["clean_pred"]]
        random_preds = [p for r in records for p in r["relevance"]["random"]]
        num_paths = len(records[0]["relevance"]["forced"])
        forced = [[p for r in records for p in r["relevance"]["forced"][e]] for e in range(num_paths)]
        out["routing_relevance"] = summarize_relevance(labels, clean_preds, random_preds, forced)
        for spec in specs:
            if not all("frozen_routing" in r["attacks"][spec.label] for r in records):
                continue
            controls = {}
            for key in ("adv_input_clean_routing", "clean_input_adv_routing"):
                preds = [p for r in records for p in r["attacks"][spec.label]["frozen_routing"][key]]
                controls[key] = sum(c and p == l for c, p, l in zip(clean, preds, labels)) / n
            out["frozen_routing"][spec.label] = controls

    # ε sweep.
    out["eps_sweep"] = {}
    if options["eps_sweep"]:
        for spec in specs:
            if spec.label not in options["sweep_attacks"]:
                continue
            curve = {}
            for eps in options["eps_sweep"]:
                key = repr(eps)
                if all(key in r["sweep"][spec.label] for r in records):
                    preds = [p for r in records for p in r["sweep"][spec.label][key]]
                    curve[eps] = sum(c and p == l for c, p, l in zip(clean, preds, labels)) / n
                else:
                    curve[eps] = out["robust_accuracy"][spec.label]
            spec_eps = _spec_eps(spec)
            if spec_eps is not None and spec_eps not in curve:
                curve[float(spec_eps)] = out["robust_accuracy"][spec.label]
            out["eps_sweep"][spec.label] = dict(sorted(curve.items()))

    # Steps check.
    out["steps_check"] = {}
    for label, doubled in (options["steps_check"] or {}).items():
        base_correct, doubled_correct = [], []
        for r in records:
            entry = (r.get("steps_check") or {}).get(label)
            if not entry:
                continue
            base_preds = r["attacks"][label]["pred"]
            for pos, p2 in zip(entry["positions"], entry["pred"]):
                ok = r["clean_pred"][pos] == r["labels"][pos]
                base_correct.append(ok and base_preds[pos] == r["labels"][pos])
                doubled_correct.append(ok and p2 == r["labels"][pos])
        if base_correct:
            spec = next(s for s in specs if s.label == label)
            out["steps_check"][label] = {
                "steps": spec.settings().get("steps", getattr(spec.attack, "steps", None)),
                "doubled_steps": doubled,
                "num_samples": len(base_correct),
                "accuracy": sum(base_correct) / len(base_correct),
                "doubled_accuracy": sum(doubled_correct) / len(doubled_correct),
            }

    # Determinism and gradients.
    out["determinism"] = None
    if options["check_determinism"]:
        out["determinism"] = {
            "max_abs_diff": max(r["determinism"]["max_abs_diff"] for r in records),
            "prediction_changed_fraction": sum(r["determinism"]["pred_changed"] for r in records) / n,
        }
    out["gradients"] = None
    if options["check_gradients"]:
        norms = [v for r in records for v in r["grad_norm"]]
        bad = [v is None or v == 0.0 for v in norms]
        finite = sorted(v for v in norms if v is not None)
        out["gradients"] = {
            "bad_fraction": sum(bad) / n,
            "num_samples": n,
            "median_norm": finite[len(finite) // 2] if finite else None,
        }

    if options["return_per_sample"]:
        per_sample: dict[str, Any] = {
            "index": [i for r in records for i in r["indices"]],
            "label": labels,
            "clean_prediction": [p for r in records for p in r["clean_pred"]],
            "predictions": {s.label: [p for r in records for p in r["attacks"][s.label]["pred"]] for s in specs},
            "worst_case_correct": worst,
        }
        if out["routing_change"]:
            per_sample["routing_change"] = {
                a: [_mean(row) for r in records for row in r["attacks"][a]["routing_change"]] for a in out["routing_change"]
            }
            per_sample["router_lipschitz"] = {
                a: [v for r in records for v in r["attacks"][a]["router_lipschitz"]] for a in out["router_lipschitz"]
            }
        out["per_sample"] = per_sample
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Cost


def _dense_counterpart(config):
    from transformers import TimesformerConfig, TimesformerForVideoClassification, VideoMAEConfig, VideoMAEForVideoClassification

    from .cost import dense_equivalent_config

    dense_config = dense_equivalent_config(config, match="active")
    model_cls = VideoMAEForVideoClassification if isinstance(dense_config, VideoMAEConfig) else None
    if isinstance(dense_config, TimesformerConfig):
        model_cls = TimesformerForVideoClassification
    return model_cls(dense_config)


def _compute_cost(model: nn.Module) -> dict[str, Any]:
    from .cost import count_cost

    out: dict[str, Any] = {}
    try:
        cost = count_cost(model)
        out.update(flops=int(cost.flops), active_parameters=int(cost.active_parameters),
                   total_parameters=int(cost.total_parameters))
    except Exception as err:
        warnings.warn(f"Could not count the cost of {type(model).__name__}: {err}", stacklevel=3)
        return out
    config = getattr(model, "config", None)
    if config is None:
        return out
    if not is_moe_model(model):
        out.update(dense_flops=out["flops"], dense_parameters=out["total_parameters"])
        return out
    try:
        dense = _dense_counterpart(config)
        dense_cost = count_cost(dense)
        out.update(dense_flops=int(dense_cost.flops), dense_parameters=int(dense_cost.total_parameters))
        del dense
    except Exception as err:
        warnings.warn(f"Could not count the cost of the dense model of the same shape: {err}", stacklevel=3)
    return out


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"hf_videomoe": __version__, "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}


# ----------------------------------------------------------------------------------------------------------------------
# Public entry point


def evaluate_robustness(
    model: nn.Module,
    dataset: Any,
    attacks: Any = None,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int | None = None,
    step_size: float | None = None,
    seed: int = 0,
    attack_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    max_samples: int | None = None,
    eps_sweep: Sequence[float] | None = None,
    sweep_attacks: Sequence[str] | None = None,
    diagnostics: bool = True,
    compute_cost: bool = True,
    check_steps: bool = False,
    check_steps_attacks: Sequence[str] | str | None = None,
    check_steps_samples: int = 32,
    check_determinism: bool = True,
    check_gradients: bool = True,
    thresholds: FlagThresholds | Mapping[str, float] | None = None,
    state_dir: str | Path | None = None,
    accelerator: Any = None,
    return_per_sample: bool = False,
    dataset_name: str | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> RobustnessReport:
    """Evaluate clean, per-attack and worst-case accuracy of a video classifier, with MoE routing diagnostics.

    Args:
        model: a video classifier taking ``pixel_values`` in [0, 1] of shape (batch, frames, channels, height,
            width) and returning ``logits`` (and ``router_logits`` for MoE models), e.g. a
            ``VideoMAEMoeForVideoClassification``. It is evaluated on the device it is on, in eval mode (its mode is
            restored afterwards).
        dataset: a ``datasets.Dataset`` with ``pixel_values`` and ``labels`` columns (formatted as torch, numpy or
            plain lists), a sequence of such dicts, a ``DataLoader`` yielding dict batches or any iterable of samples
            / batches (in a deterministic order).
        attacks: attack names (``"pgd"``, ``"j-tlga"``, ...), ``Attack`` instances, or a dict ``{label: kwargs or
            Attack}`` (kwargs may include ``"name"`` to run variants of one attack, e.g. ``{"pgd-50": {"name": "pgd",
            "steps": 50}}``). ``None`` runs [`DEFAULT_ATTACKS`] (MoE-only attacks dropped for dense models).
        eps, norm, steps, step_size, seed: shared settings of the attacks built by name (``steps`` / ``step_size``
            ``None`` keep each attack's default). ``seed`` also seeds the per-batch RNG.
        attack_kwargs: more keyword arguments for every attack built by name (e.g. ``{"restarts": 2}``).
        batch_size: samples per batch.
        max_samples: evaluate only the first ``max_samples`` samples.
        eps_sweep: ε values at which to rerun the attacks (robust accuracy vs ε); ``eps`` is always on the curve.
        sweep_attacks: which attacks the sweep covers (default: all).
        diagnostics: compute routing change, Lips-R and expert usage (MoE models only).
        compute_cost: count FLOPs and parameters of the model and of the dense model of the same shape.
        check_steps: rerun white-box attacks with twice the steps on the first ``check_steps_samples`` samples and
            flag accuracy that rises with steps.
        check_steps_attacks: which attacks (default: the first multi-step white-box attack; ``"all"`` for all).
        check_determinism: run every clean forward twice and flag differing logits.
        check_gradients: compute the input gradient of the CE per sample and flag zero / NaN gradients.
        thresholds: margins of the reliability flags (a [`FlagThresholds`] or a dict of its fields).
        state_dir: folder for resumable per-batch state (JSON, atomic writes).
        accelerator: an ``accelerate.Accelerator`` / ``PartialState`` to shard over processes; by default an already
            initialised ``PartialState`` (or a ``WORLD_SIZE > 1`` launch) is detected.
        return_per_sample: keep per-sample predictions in ``report.per_sample``.
        dataset_name: recorded in the report (and the model card).
        progress: show a tqdm progress bar (main process only).
        callback: called after every finished batch with ``{"batch_index", "completed", "total", "record"}``;
            an exception it raises stops the evaluation (finished batches stay in ``state_dir``).

    Returns:
        A [`RobustnessReport`]; identical on every process.

    Raises:
        ValueError: an unknown attack, an unusable ε (≤ 0, > 1 for L∞, empty sweep), an empty or unlabeled dataset,
            pixel values that do not match the model's config, labels out of range, MoE attacks on a dense model, or
            a ``state_dir`` written with other settings — all before any attack runs.
    """
    # 1. Cheap argument checks.
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    eps = _check_eps(eps, norm, "eps")
    if eps_sweep is not None:
        eps_sweep = list(eps_sweep)
        if not eps_sweep:
            raise ValueError("eps_sweep is empty: give at least one ε (e.g. [4/255, 8/255, 16/255]) or None.")
        eps_sweep = sorted({_check_eps(e, norm, "eps_sweep value") for e in eps_sweep})
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if check_steps_samples < 1:
        raise ValueError(f"check_steps_samples must be >= 1, got {check_steps_samples}.")
    if thresholds is None:
        thresholds = FlagThresholds()
    elif isinstance(thresholds, Mapping):
        thresholds = FlagThresholds(**thresholds)

    # 2. Data: type, emptiness, labels, shape vs model config.
    source = make_source(dataset, max_samples)
    _check_model_input(model, source)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    labels_fn = getattr(source, "labels", None)
    if labels_fn is not None and (all_labels := labels_fn()) is not None:
        _check_labels(all_labels, num_labels)

    # 3. Attacks.
    moe = is_moe_model(model)
    shared = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "seed": seed}
    specs = _resolve_attacks(attacks, shared=shared, extra=dict(attack_kwargs or {}), moe=moe)
    labels = [s.label for s in specs]
    if sweep_attacks is None:
        sweep_attacks = labels if eps_sweep else []
    else:
        sweep_attacks = list(sweep_attacks)
        unknown = [a for a in sweep_attacks if a not in labels]
        if unknown:
            raise ValueError(f"sweep_attacks {unknown} are not among the evaluated attacks {labels}.")
    steps_check: dict[str, int] = {}
    if check_steps:
        multi_step = [s for s in specs if s.white_box and int(s.settings().get("steps", getattr(s.attack, "steps", 1)) or 1) > 1]
        if check_steps_attacks == "all":
            chosen = multi_step
        elif check_steps_attacks is None:
            chosen = multi_step[:1]
        else:
            names = [check_steps_attacks] if isinstance(check_steps_attacks, str) else list(check_steps_attacks)
            unknown = [a for a in names if a not in labels]
            if unknown:
                raise ValueError(f"check_steps_attacks {unknown} are not among the evaluated attacks {labels}.")
            chosen = [s for s in specs if s.label in names]
        for spec in chosen:
            base_steps = int(spec.settings().get("steps", getattr(spec.attack, "steps", 1)) or 1)
            steps_check[spec.label] = 2 * base_steps
            spec.variant(steps=2 * base_steps)  # fail now, not after the first batch
    for spec in specs:
        if spec.label in sweep_attacks:
            for e in eps_sweep or []:
                spec.variant(eps=e)

    options = {
        "seed": int(seed),
        "eps": eps,
        "diagnostics": bool(diagnostics),
        "check_determinism": bool(check_determinism),
        "check_gradients": bool(check_gradients),
        "eps_sweep": eps_sweep,
        "sweep_attacks": list(sweep_attacks),
        "steps_check": steps_check or None,
        "steps_check_samples": int(check_steps_samples),
        "return_per_sample": bool(return_per_sample),
    }
    dist = _resolve_distributed(accelerator)

    # 4. Resumable state.
    store = None
    if state_dir is not None:
        settings = {
            "attacks": [[s.label, s.settings()] for s in specs],
            "eps": eps,
            "norm": norm,
            "seed": int(seed),
            "batch_size": batch_size,
            "max_samples": max_samples,
            "eps_sweep": eps_sweep,
            "sweep_attacks": list(sweep_attacks),
            "steps_check": steps_check or None,
            "steps_check_samples": int(check_steps_samples) if steps_check else None,
            "diagnostics": bool(diagnostics and moe),
            "check_determinism": bool(check_determinism),
            "check_gradients": bool(check_gradients),
            "data": source.fingerprint(),
            "model": _model_fingerprint(model),
        }
        settings = json.loads(json.dumps(settings))
        store = _StateStore(state_dir, settings, dist)

    # 5. Cost (cheap: one forward of each model).
    cost = _compute_cost(model) if compute_cost else {}

    # 6. The loop.
    evaluator = _Evaluator(model, specs, options)
    done = store.done(dist.rank, dist.world) if store is not None else set()
    total_batches = None if source.num_samples is None else -(-source.num_samples // batch_size)
    my_total = None if total_batches is None else len(range(dist.rank, total_batches, dist.world))
    records: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    bar = tqdm(total=my_total, desc="Robustness evaluation", unit="batch", disable=not progress or not dist.is_main,
               dynamic_ncols=True)
    try:
        wanted = _Excluding(done) if done else None  # finished batches are not even loaded
        for batch in source.batches(batch_size, wanted, dist.world, dist.rank):
            if batch.index in done:
                record = store.load(batch.index)
            else:
                _check_labels(batch.labels, num_labels)
                record = evaluator.run_batch(batch)
                if store is not None:
                    store.save(record)
            records.append(record)
            bar.update(1)
            clean_done = sum(p == l for r in records for p, l in zip(r["clean_pred"], r["labels"]))
            seen = sum(len(r["labels"]) for r in records)
            bar.set_postfix(clean=f"{clean_done / seen:.3f}", refresh=False)
            if callback is not None:
                callback({"batch_index": batch.index, "completed": len(records), "total": my_total, "record": record})
    finally:
        bar.close()
        model.train(was_training)

    all_records = dist.gather(records)
    if not all_records or sum(len(r["labels"]) for r in all_records) == 0:
        raise ValueError("The evaluation dataset is empty.")
    agg = _aggregate(all_records, specs, options)

    # 7. Flags and report.
    flags, checks = compute_flags(
        robust_accuracy=agg["robust_accuracy"],
        white_box=[s.label for s in specs if s.white_box],
        black_box=[s.label for s in specs if not s.white_box],
        eps_sweep=agg["eps_sweep"],
        sweep_requested=bool(eps_sweep),
        steps_check=agg["steps_check"],
        steps_requested=bool(check_steps),
        determinism=agg["determinism"],
        gradients=agg["gradients"],
        thresholds=thresholds,
        expert_usage=agg["expert_usage"].get("clean"),
        routing_relevance=agg["routing_relevance"],
    )
    config = getattr(model, "config", None)
    return RobustnessReport(
        clean_accuracy=agg["clean_accuracy"],
        robust_accuracy=agg["robust_accuracy"],
        worst_case_accuracy=agg["worst_case_accuracy"],
        num_samples=agg["num_samples"],
        eps=eps,
        norm=norm,
        input_shape=[int(v) for v in sample_shape(source.first_sample())],
        steps=steps,
        seed=int(seed),
        attacks=labels,
        attack_settings={s.label: s.settings() for s in specs},
        attack_arguments={
            s.label: json.loads(json.dumps({"name": s.name, **s.kwargs}, default=_json_default))
            if s.kwargs is not None else {"instance": type(s.attack).__name__}
            for s in specs
        },
        routing_change=agg["routing_change"],
        routing_change_per_layer=agg["routing_change_per_layer"],
        router_lipschitz=agg["router_lipschitz"],
        batch_size=batch_size,
        eps_sweep=agg["eps_sweep"],
        expert_usage=agg["expert_usage"],
        routing_relevance=agg["routing_relevance"],
        frozen_routing=agg["frozen_routing"],
        perturbation_energy=agg["perturbation_energy"],
        flags=flags,
        checks=checks,
        steps_check=agg["steps_check"],
        model_class=type(model).__name__,
        model_type=getattr(config, "model_type", None),
        dataset_name=dataset_name,
        versions=_versions(),
        per_sample=agg.get("per_sample"),
        **cost,
    )
