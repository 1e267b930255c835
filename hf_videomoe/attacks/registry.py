"""The attack registry: ``ATTACKS`` (name -> class) and ``build_attack``."""

from __future__ import annotations

import difflib

from .apgd import APGDCE, APGDDLR, APGDT
from .base import Attack
from .names import DENSE_ATTACKS, MOE_ATTACKS
from .moe_attacks import JTLA, JTLGA, PGDR, TLAE, TLAM, TLAR, TLGAR
from .pgd import FGSM, PGD
from .square import Square
from .temporal_translation import TT

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (FGSM, PGD, APGDCE, APGDDLR, APGDT, Square, TT, PGDR, TLAR, TLGAR, TLAE, TLAM, JTLA, JTLGA)
}
"""Every named attack, in a stable order: standard attacks first, then the paper's component attacks."""


__all__ = ["ATTACKS", "DENSE_ATTACKS", "MOE_ATTACKS", "build_attack", "resolve_attack_name"]


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
            raise TypeError(f"{cls.name!r} does not take {', '.join(map(repr, unknown))}. It accepts: "
                            f"{', '.join(accepted)}. (Pass strict=False to drop unsupported settings.)")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(**kwargs)
