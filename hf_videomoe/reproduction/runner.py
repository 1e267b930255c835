"""[`Reproduction`]: trains and evaluates every (seed, method) of the reproduction, caching each finished unit
of work on disk so that an interrupted run resumes where it stopped.

The cache is meant to outlive the machine: a folder that keeps only the JSON results (what `results/reproduction2`
keeps under version control) resumes too. A finished unit is read from its ``result.json`` and needs no weights; a
checkpoint that later units start from (the dense baseline, the upcycled mixture, a trained row) is retrained when
only its ``train.json`` is left, and must come out with the recorded weights' fingerprint (the SHA-256 of its tensors,
the one the evaluation state records too), or the run stops before saving them: results of other weights must not
mix. In reproducible mode (``scripts/reproduce_paper.py``'s default, `hf_videomoe.reproducibility`) retraining gives
the recorded weights on any x86-64 CPU, so the tracked cache keeps no weights (``CACHE_GITIGNORE``); each evaluation's
report is kept compressed (``report-*.json.gz``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..attacks import ATTACKS
from ..evaluation import ATTACK_PRESETS, RobustnessReport, evaluate_robustness
from ..moe import is_moe_model
from .data import reproduction_data
from .recipes import (
    ABLATIONS,
    ATTACK_TABLE_ATTACKS,
    CACHE_GITIGNORE,
    DEFENSE_ATTACKS,
    DEFENSES,
    EXTRA_ATTACKS,
    Settings,
    TensorVideoDataset,
    cached_report,
    compress_file,
    eps_name,
    eps_slug,
    log,
    read_json,
    show_inner_progress,
    stack_collate,
    write_json,
)
from .report import compute_seconds
from .training_stage import TrainingStage


class Reproduction(TrainingStage):
    def __init__(
        self,
        settings: Settings,
        output_dir: Path,
        seeds: list[int],
        ablation_seeds: list[int],
        attack_table_seeds: list[int],
        skip_ablations: bool,
        defenses: list[str] | None = None,
        ablations: list[str] | None = None,
    ):
        """The plan of one reproduction: ``defenses`` (rows of table (b), default all; the rows a chosen row needs are
        added before it) on ``seeds``, table (a) at every ε on ``attack_table_seeds``, and ``ablations`` (default all;
        repeats dropped, order kept) on ``ablation_seeds`` unless ``skip_ablations``. Names are checked against
        ``DEFENSES`` and ``ABLATIONS``."""
        for kind, chosen, known in (("defenses", defenses, DEFENSES), ("ablations", ablations, ABLATIONS)):
            unknown = sorted(set(chosen or []) - set(known))
            if unknown:
                raise ValueError(f"unknown {kind} {unknown}; expected some of {list(known)}")
        self.settings = settings
        self.defenses = self._with_dependencies(list(DEFENSES) if defenses is None else list(defenses))
        self.out = output_dir
        self.seeds = seeds
        self.ablation_seeds = [] if skip_ablations else ablation_seeds
        self.ablations = list(dict.fromkeys(ABLATIONS if ablations is None else ablations))
        self.attack_table_seeds = attack_table_seeds
        self._data = None
        self._tensors = {}
        self.collator = stack_collate
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        gitignore = self.out / ".gitignore"
        if not gitignore.exists() or gitignore.read_text() != CACHE_GITIGNORE:
            gitignore.write_text(CACHE_GITIGNORE)

    @staticmethod
    def _with_dependencies(defenses: list[str]) -> list[str]:
        """``defenses`` without repeats, with the rows the compute-matched row is sized from (J-TLAT's wall-clock, MoE
        AT's seconds per epoch) planned before it, so that the plan and ``--status`` show every job that runs."""
        ordered = []
        for key in defenses:
            needs = ["moe-at", "j-tlat"] if key == "moe-at-matched" else []
            for name in [*needs, key]:
                if name not in ordered:
                    ordered.append(name)
        return ordered

    # -- settings / cache consistency ------------------------------------------------------------------------------
    def _check_settings(self) -> None:
        path = self.out / "settings.json"
        current = self.settings.to_dict()
        if path.exists():
            saved = read_json(path)
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            if diff:
                raise SystemExit(
                    f"{path} was written with other settings ({', '.join(diff)} differ); cached results would mix. "
                    "Use another --output-dir (or delete that folder)."
                )
        else:
            write_json(path, current)

    # -- data --------------------------------------------------------------------------------------------------------
    @property
    def data(self):
        if self._data is None:
            self._data = reproduction_data(self.settings)
        return self._data

    def split(self, name: str) -> TensorVideoDataset:
        if name not in self._tensors:
            self._tensors[name] = TensorVideoDataset(self.data[name])
        return self._tensors[name]

    @property
    def label_names(self) -> list[str]:
        return self.data["train"].features["labels"].names

    @property
    def eval_set(self):
        test = self.split("test")
        return test.select(range(min(self.settings.eval_samples, len(test))))

    # -- plan --------------------------------------------------------------------------------------------------------
    def plan(self) -> list[tuple]:
        jobs = []
        for seed in self.seeds:
            for method in self.defenses:
                jobs.append(("defense", seed, method))
            if seed in self.attack_table_seeds:
                for eps in self.settings.eps_values:
                    jobs.append(("attacks", seed, eps))
            elif "moe-at" in self.defenses:  # table (a) at the training ε is MoE AT's own evaluation: free to collect
                jobs.append(("attacks", seed, self.settings.eps_values[0]))
        # One ablation on every seed before the next: each ablation's verdict (a sign test over seeds) can be read as
        # soon as its own seeds are in, rather than after every ablation of the first seed.
        for name in self.ablations:
            for seed in self.ablation_seeds:
                jobs.append(("ablation", seed, name))
        return jobs

    def result_path(self, kind: str, seed: int, what) -> Path:
        """The JSON file whose presence marks the job ``(kind, seed, what)`` of `plan` as done."""
        if kind == "defense":
            return self.seed_dir(seed) / what / "result.json"
        if kind == "attacks":
            return self.seed_dir(seed) / "moe-at" / f"attack-table-{eps_slug(what)}.json"
        return self.seed_dir(seed) / f"ablation-{what}" / "result.json"

    def progress(self) -> list[dict]:
        """Per seed: the planned jobs, those done, and the compute recorded in the seed's folder (every training run and
        finished evaluation, whatever plan made it)."""
        rows = {}
        for kind, seed, what in self.plan():
            if seed not in rows:  # compute_seconds walks the seed's folder: once per seed, not once per job
                rows[seed] = {
                    "seed": seed,
                    "planned": 0,
                    "done": 0,
                    "missing": [],
                    "seconds": compute_seconds(self.seed_dir(seed)),
                }
            row = rows[seed]
            row["planned"] += 1
            if self.result_path(kind, seed, what).exists():
                row["done"] += 1
            else:
                row["missing"].append(f"{kind} {eps_name(what) if kind == 'attacks' else what}")
        return list(rows.values())

    def run(self) -> None:
        jobs = self.plan()
        bar = tqdm(jobs, desc="reproduction", unit="job", dynamic_ncols=True, mininterval=1.0)
        for job in bar:
            kind, seed, what = job
            bar.set_postfix_str(f"seed {seed} {kind} {what if kind != 'attacks' else eps_name(what)}")
            if kind == "defense":
                self.defense(seed, what)
            elif kind == "attacks":
                self.attack_table(seed, what)
            else:
                self.ablation(seed, what)
        bar.close()

    # -- cache layout ------------------------------------------------------------------------------------------------
    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    # -- evaluation --------------------------------------------------------------------------------------------------
    def evaluate(self, model, attacks, eps: float, report_path: Path):
        """Evaluate ``model`` (resuming from the report's per-batch state if there is one); returns ``(report,
        timing)``, where ``timing`` holds this invocation's ``seconds`` and the number of ``resumed_batches`` an
        earlier invocation had finished (their time is not in ``seconds``: a resumed evaluation undercounts)."""
        s = self.settings
        state_dir = report_path.parent / (report_path.stem + "-state")
        resumed_batches = len(list((state_dir / "batches").glob("batch_*.json")))
        spec = {}
        for name in attacks:
            spec[name] = {"name": name}
            if name in EXTRA_ATTACKS:  # AutoAttack's settings with the run's budgets, not the paper attacks' steps
                spec[name] = {
                    **ATTACK_PRESETS["autoattack"][name],
                    "steps": s.square_queries if name == "square" else s.autoattack_steps,
                }
        start = time.perf_counter()
        # The paper's attacks run on every clip (their own accuracies, routing diagnostics, steps check); AutoAttack's
        # ensemble then runs as AutoAttack does, only on the clips all of them left standing: the same worst case for
        # about half the ensemble's work (docs/PROTOCOL.md, docs/BENCHMARKS.md).
        report = evaluate_robustness(
            model.eval(),
            self.eval_set,
            attacks=spec,
            eps=eps,
            steps=s.eval_steps,
            seed=s.eval_seed,
            mode="cascade",
            exact_attacks=[a for a in attacks if a not in EXTRA_ATTACKS],
            batch_size=s.eval_batch_size,
            max_samples=s.eval_samples,
            return_per_sample=True,
            check_steps=True,
            progress=show_inner_progress(),
            dataset_name="MovingShapes",
            state_dir=state_dir,
        )
        timing = {"seconds": time.perf_counter() - start, "resumed_batches": resumed_batches}
        report.save(report_path)
        # The report holds every per-clip number, kept compressed; the per-batch state was only for resuming.
        compress_file(report_path)
        shutil.rmtree(state_dir, ignore_errors=True)
        return report, timing

    @staticmethod
    def worst_case_correct(report, attacks) -> list[bool]:
        """Per clip: classified correctly clean and under each of ``attacks`` (from the report's per-sample data)."""
        ps = report.per_sample
        labels = ps["label"]
        ok = [c == l for c, l in zip(ps["clean_prediction"], labels)]
        for name in attacks:
            ok = [o and p == l for o, p, l in zip(ok, ps["predictions"][name], labels)]
        return ok

    def summarise(self, report, attacks, timing: dict) -> dict:
        correct = self.worst_case_correct(report, attacks)
        row = {
            "clean": report.clean_accuracy,
            "robust": {a: report.robust_accuracy[a] for a in attacks},
            "worst_case": sum(correct) / len(correct),  # the fraction of clips no attack fools
            "worst_case_correct": correct,  # per clip, for the paired (McNemar) tests between rows
            "worst_case_attacks": list(attacks),
            "routing_change": {a: report.routing_change.get(a) for a in attacks if a in report.routing_change},
            "router_lipschitz": {a: report.router_lipschitz.get(a) for a in attacks if a in report.router_lipschitz},
            "flops": report.flops,
            "dense_flops": report.dense_flops,
            "active_parameters": report.active_parameters,
            "total_parameters": report.total_parameters,
            "flags": report.flag_names,
            "routing_relevance": report.routing_relevance,
            # The busiest expert's share of the clean routing units, per MoE layer (1.0 = collapsed onto one expert).
            "busiest_expert_share": [max(layer) for layer in report.expert_usage.get("clean", [])] or None,
            "num_samples": report.num_samples,
            "eval_seconds": timing["seconds"],
            "eval_resumed_batches": timing.get("resumed_batches", 0),
        }
        return row

    def _row_attacks(self, model) -> list[str]:
        moe = is_moe_model(model)
        return [a for a in DEFENSE_ATTACKS if moe or not ATTACKS[a].requires_moe]

    # -- jobs --------------------------------------------------------------------------------------------------------
    def defense(self, seed: int, key: str) -> dict:
        result_path = self.result_path("defense", seed, key)
        if result_path.exists():
            return read_json(result_path)
        label, method, start = DEFENSES[key]
        epochs = None
        if key == "moe-at-matched":  # as many PGD-AT epochs as J-TLAT's wall-clock time of this seed allows
            # Only their training records are needed: this row can train while their evaluations run elsewhere.
            records = {}
            for name in ("j-tlat", "moe-at"):
                _, method, start = DEFENSES[name]
                path = self.seed_dir(seed) / name / "train.json"
                records[name] = (
                    read_json(path) if path.exists() else self.trained_model(seed, name, method, start, {}, {})[1]
                )
            epochs = max(round(records["j-tlat"]["seconds"] / records["moe-at"]["seconds_per_epoch"], 1), 0.1)
        model, info = self.trained_model(seed, key, method, start, {}, {}, epochs=epochs)
        if key == "moe-at":
            # The MoE AT model is also table (a)'s model: evaluate every attack once at the training ε and take this
            # row's numbers from that run (each attack's RNG depends only on (seed, batch, attack), so this equals a
            # run with the row's attacks only).
            report, timing = self._attack_report(seed, self.settings.train_eps, model)
        else:
            report, timing = self.evaluate(
                model,
                self._row_attacks(model),
                self.settings.train_eps,
                self.seed_dir(seed) / key / f"report-{eps_slug(self.settings.train_eps)}.json",
            )
        result = {
            "seed": seed,
            "method": key,
            "label": label,
            "train": info,
            "weights_sha256": info.get("weights_fingerprint"),
            **self.summarise(report, self._row_attacks(model), timing),
        }
        write_json(result_path, result)
        log(f"seed {seed}: {label}: clean {100 * result['clean']:.1f}%, worst case {100 * result['worst_case']:.1f}%")
        return result

    def _attack_report(self, seed: int, eps: float, model=None):
        report_path = self.seed_dir(seed) / "moe-at" / f"attacks-{eps_slug(eps)}.json"
        seconds_path = report_path.with_suffix(".seconds.json")
        cached = cached_report(report_path)
        if cached is not None and seconds_path.exists():
            return RobustnessReport.from_dict(read_json(cached)), read_json(seconds_path)
        if model is None:
            model, _ = self.trained_model(seed, "moe-at", "pgd-at", "moe", {}, {})
        log(f"seed {seed}: table (a) attacks on MoE AT at ε={eps_name(eps)}")
        report, timing = self.evaluate(model, ATTACK_TABLE_ATTACKS, eps, report_path)
        write_json(seconds_path, timing)
        return report, timing

    def attack_table(self, seed: int, eps: float) -> dict:
        result_path = self.result_path("attacks", seed, eps)
        if result_path.exists():
            return read_json(result_path)
        report, timing = self._attack_report(seed, eps)
        result = {
            "seed": seed,
            "eps": eps,
            "clean": report.clean_accuracy,
            "robust": dict(report.robust_accuracy),
            "routing_change": dict(report.routing_change),
            "router_lipschitz": dict(report.router_lipschitz),
            "frozen_routing": dict(report.frozen_routing),
            "worst_case": report.worst_case_accuracy,
            "worst_case_attacks": list(report.attacks),
            "flags": report.flag_names,
            "routing_relevance": report.routing_relevance,
            "eval_seconds": timing["seconds"],
            "eval_resumed_batches": timing.get("resumed_batches", 0),
        }
        write_json(result_path, result)
        return result

    def ablation(self, seed: int, name: str) -> dict:
        run_name = f"ablation-{name}"
        result_path = self.result_path("ablation", seed, name)
        if result_path.exists():
            return read_json(result_path)
        label, arg_overrides, config_overrides = ABLATIONS[name]
        model, info = self.trained_model(seed, run_name, "j-tlat", "moe", arg_overrides, config_overrides)
        attacks = self._row_attacks(model)
        report, timing = self.evaluate(
            model,
            attacks,
            self.settings.train_eps,
            self.seed_dir(seed) / run_name / f"report-{eps_slug(self.settings.train_eps)}.json",
        )
        result = {
            "seed": seed,
            "ablation": name,
            "label": label,
            "train": info,
            "weights_sha256": info.get("weights_fingerprint"),
            **self.summarise(report, attacks, timing),
        }
        write_json(result_path, result)
        log(
            f"seed {seed}: J-TLAT {label}: clean {100 * result['clean']:.1f}%, worst case "
            f"{100 * result['worst_case']:.1f}%"
        )
        return result

    # -- collection --------------------------------------------------------------------------------------------------
    def collect(self) -> dict:
        results = {"defenses": {}, "attacks": {}, "ablations": {}, "dense_clean": {}}
        for seed in self.seeds:
            dense_info = self.seed_dir(seed) / "dense-clean" / "train.json"
            if dense_info.exists():
                results["dense_clean"][seed] = read_json(dense_info)
            for key in DEFENSES:
                path = self.result_path("defense", seed, key)
                if path.exists():
                    results["defenses"].setdefault(key, {})[seed] = read_json(path)
            for eps in self.settings.eps_values:
                path = self.result_path("attacks", seed, eps)
                if path.exists():
                    results["attacks"].setdefault(eps, {})[seed] = read_json(path)
        for seed in self.ablation_seeds:
            for name in ABLATIONS:  # every ablation on disk, not only this plan's: the results page shows them all
                path = self.result_path("ablation", seed, name)
                if path.exists():
                    results["ablations"].setdefault(name, {})[seed] = read_json(path)
        return results
