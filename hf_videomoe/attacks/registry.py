"""The attack registry: ``ATTACKS`` (name -> class) and ``build_attack``."""

from __future__ import annotations

import difflib

from .apgd import APGDCE, APGDDLR, APGDT
from .base import Attack
from .moe_attacks import JTLA, JTLGA, PGDR, TLAE, TLAM, TLAR, TLGAR
from .names import DENSE_ATTACKS, MOE_ATTACKS
from .pgd import FGSM, PGD
from .square import Square
from .temporal_translation import TT

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (FGSM, PGD, APGDCE, APGDDLR, APGDT, Square, TT, PGDR, TLAR, TLGAR, TLAE, TLAM, JTLA, JTLGA)
}
"""Every named attack, in a stable order: standard attacks first, then the paper's component attacks."""


__all__ = ["ATTACKS", "DENSE_ATTACKS", "MOE_ATTACKS", "build_attack", "resolve_attack_name", "split_attacks_for_model"]


def resolve_attack_name(name: str) -> str:
    """Normalise ``name`` (case, ``_`` for ``-``, surrounding spaces) and check it is registered.

    Raises:
        ValueError: unknown name; the message lists the valid names and suggests the closest one.
    """
    if not isinstance(name, str):
        raise TypeError(f"Attack names are strings, got {type(name).__name__}.")
    key = name.strip().lower().replace("_", "-")
    if key in ATTACKS:
        return key
    close = difflib.get_close_matches(key, list(ATTACKS), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown attack {name!r}.{hint} Valid names: {', '.join(ATTACKS)}.")


def build_attack(name: str, *, strict: bool = True, **kwargs) -> Attack:
    """Build a named attack.

    Args:
        name: one of ``ATTACKS`` (``fgsm``, ``pgd``, ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``square``, ``tt``, ``pgd-r``, ``tla-r``,
            ``tlga-r``, ``tla-e``, ``tla-m``, ``j-tla``, ``j-tlga``); case and ``_``/``-`` are not significant.
        strict: if ``False``, silently drop keyword arguments the attack does not take (handy when one settings dict
            drives several attacks, e.g. ``guidance_weight`` for both ``pgd`` and ``j-tlga``). With ``True`` (default)
            they raise a ``TypeError`` listing the accepted ones.
        **kwargs: the attack's settings (``eps``, ``steps``, ``step_size``, ``norm``, ``random_start``, ``seed``, ...;
            see each class).

    Example:

    ```python
    >>> from hf_videomoe.attacks import build_attack
    >>> attack = build_attack("j-tlga", eps=8 / 255, steps=10)
    >>> adv_batch = attack(model, {"pixel_values": pixel_values, "labels": labels})  # doctest: +SKIP
    ```
    """
    cls = ATTACKS[resolve_attack_name(name)]
    accepted = cls.accepted_kwargs()
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        if strict:
            raise TypeError(
                f"{cls.name!r} does not take {', '.join(map(repr, unknown))}. It accepts: "
                f"{', '.join(accepted)}. (Pass strict=False to drop unsupported settings.)"
            )
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(**kwargs)


def split_attacks_for_model(names, model_or_moe) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: the attack ``names`` that apply to a model, and the MoE-only ones dropped because it has no
    MoE layer. ``model_or_moe`` is the model or a bool (whether it is an MoE model); names are resolved (unknown
    ones raise `ValueError`) and anything that is not a name (a dict, an `Attack`) is kept."""
    if isinstance(model_or_moe, bool):
        moe = model_or_moe
    else:
        from ..moe import is_moe_model

        moe = is_moe_model(model_or_moe)
    kept, dropped = [], []
    for name in names:
        if isinstance(name, str) and not moe and ATTACKS[resolve_attack_name(name)].requires_moe:
            dropped.append(name)
        else:
            kept.append(name)
    return kept, dropped
