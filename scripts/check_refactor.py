"""Does a refactor change behaviour? Runs the demo's and the reproduction's quick modes on a fixed seed in a
reference revision and in the working tree, and compares their results number for number.

    python scripts/check_refactor.py --reference 91bb9d6
    # settings that changed on purpose since the reference can be imposed on the working tree's demo:
    python scripts/check_refactor.py --reference 91bb9d6 \\
        --demo-settings '{"router_granularity": "token", "cluster_router_clips": 0}'

Exit status 0 when every compared number is identical; the differences are printed otherwise. Timings and versions are
left out of the comparison, and so is the reproduction's RESULTS.md (its tables are those JSON numbers plus training
times). Takes a few minutes on 2 cores (both trees run each quick mode once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Timings, versions and the command line (it names the temporary output folder) are not behaviour.
IGNORED_KEYS = ("seconds", "runtime", "time", "versions", "date", "command")

DEMO = """
import dataclasses, json, sys
from hf_videomoe import demo
overrides = json.loads(sys.argv[2])
if overrides:
    settings = dataclasses.replace(demo.DemoSettings.quick(), **overrides)
    demo.run_demo(output_dir=sys.argv[1], settings=settings, seed=0)
else:
    demo.run_demo(output_dir=sys.argv[1], quick=True, seed=0)
"""


def run(tree: Path, args: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    with log.open("w") as handle:
        result = subprocess.run([sys.executable, *args], cwd=tree, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed in {tree} (log: {log}).")


def outputs(tree: Path, out: Path, demo_settings: dict) -> dict:
    """The numbers of both quick modes run in ``tree``, keyed by file."""
    run(tree, ["-c", DEMO, str(out / "demo"), json.dumps(demo_settings)], out / "demo.log")
    run(
        tree,
        [str(tree / "scripts" / "reproduce_paper.py"), "--quick", "--threads", "1", "--output-dir", str(out / "repro")],
        out / "repro.log",
    )
    found = {"demo/summary.json": json.loads((out / "demo" / "summary.json").read_text())["results"]}
    for path in sorted((out / "repro").rglob("*.json")):
        found[str(path.relative_to(out))] = json.loads(path.read_text())
    return found


def differences(reference, current, path: str = "") -> list[str]:
    if isinstance(reference, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(reference) | set(current), key=str):
            if any(word in str(key).lower() for word in IGNORED_KEYS):
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in reference or key not in current:
                out.append(f"{where}: only in {'the working tree' if key in current else 'the reference'}")
            else:
                out.extend(differences(reference[key], current[key], where))
        return out
    if isinstance(reference, list) and isinstance(current, list) and len(reference) == len(current):
        return [d for i, (a, b) in enumerate(zip(reference, current)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if reference == current else [f"{path}: {reference!r} -> {current!r}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="git revision to compare against")
    parser.add_argument("--demo-settings", default="{}", help="JSON DemoSettings fields imposed on the working tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check_refactor_") as tmp:
        tmp = Path(tmp)
        reference_tree = tmp / "reference"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(reference_tree), args.reference],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            (tmp / "ref_out").mkdir()
            (tmp / "cur_out").mkdir()
            reference = outputs(reference_tree, tmp / "ref_out", {})
            current = outputs(ROOT, tmp / "cur_out", json.loads(args.demo_settings))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(reference_tree)], cwd=ROOT, check=False)
        found = differences(reference, current)
    print(f"compared {len(reference)} result files of demo --quick and reproduce_paper.py --quick")
    if found:
        print(f"{len(found)} differences:")
        print("\n".join(f"  {line}" for line in found[:50]))
        return 1
    print("identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
