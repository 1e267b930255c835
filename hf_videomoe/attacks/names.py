"""Attack names by what they need, as data only, so that error messages in the engine can list them without
importing the registry (which imports every attack class). `registry.ATTACKS` is checked against these in the tests."""

DENSE_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square", "tt", "tla-m")
"""Attacks that only need logits and therefore apply to dense models too."""

MOE_ATTACKS: tuple[str, ...] = ("pgd-r", "tla-r", "tlga-r", "tla-e", "j-tla", "j-tlga")
"""Attacks that target routers or experts and need a Mixture-of-Experts model."""
