"""The small-scale reproduction of the paper's tables on MovingShapes, as a library: what runs ([`Settings`],
``DEFENSES``, ``ABLATIONS``), the cached runner ([`Reproduction`]) and the results file. The command line is
``scripts/reproduce_paper.py``."""

from .claims import what_holds
from .recipes import ABLATIONS, ATTACK_TABLE_ATTACKS, DEFENSES, PAPER_ATTACKS, Settings, log, write_json
from .report import MANUAL_MARKER, compute_seconds, machine_description, software_of_results, write_results
from .runner import Reproduction

__all__ = [
    "ABLATIONS",
    "ATTACK_TABLE_ATTACKS",
    "DEFENSES",
    "MANUAL_MARKER",
    "PAPER_ATTACKS",
    "Reproduction",
    "Settings",
    "compute_seconds",
    "log",
    "machine_description",
    "software_of_results",
    "what_holds",
    "write_json",
    "write_results",
]
