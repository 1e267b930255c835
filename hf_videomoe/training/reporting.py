"""What an adversarial trainer reports: the logged loss components, robust evaluation, model card and Hub upload.

[`RobustReportingMixin`] overrides the `Trainer` hooks `log`, `evaluate`, `create_model_card` and `push_to_hub`; the
trainer it is mixed into provides ``adv_method``, ``method``, ``is_moe``, ``attack_kwargs`` and the callback state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import logging

from ..attacks import attack_mode, build_attack
from ..evaluation import RobustnessArguments, evaluate_robustness
from ..hub import build_model_card, push_robust_checkpoint
from ..moe import routing_change_per_layer
from .arguments import ROBUST_METRIC_PREFIX, WORST_CASE_METRIC
from .checks import catastrophic_overfitting
from .losses import split_router_logits
from .methods import METHODS
from .phases import PhaseLoss, TrainingPhase

logger = logging.get_logger(__name__)

__all__ = ["RobustReportingMixin"]

# Model outputs that are not predictions: never gathered by `evaluate` (router logits are ragged across batches).
NON_PREDICTION_KEYS = ["aux_loss", "router_logits", "hidden_states", "attentions"]


class RobustReportingMixin:
    """Logging, robust evaluation, model card and Hub upload of [`AdversarialTrainer`] (mixed in before `Trainer`)."""

    # ------------------------------------------------------------------------------------------------------------------
    # Logged metrics
    # ------------------------------------------------------------------------------------------------------------------

    def _accumulate(self, name: str, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value).detach().float().mean().to(self.args.device)
        if name in self._metric_sums:
            self._metric_sums[name] = self._metric_sums[name] + value
            self._metric_counts[name] += 1
        else:
            self._metric_sums[name] = value
            self._metric_counts[name] = 1

    def _record_phase(self, phase: TrainingPhase, loss: PhaseLoss) -> None:
        """Keep the phase's terms for the NaN check and accumulate their means for `log`."""
        terms = dict(loss.terms)
        if not any(name.startswith("loss_") for name in terms):  # a fused phase reports its parts itself
            terms = {f"loss_{phase.name}": loss.per_sample, **terms}
        self._phase_terms = terms
        for name, value in terms.items():
            self._accumulate(name, value)

    def _is_logging_step(self) -> bool:
        """Whether the optimizer step in progress will be logged (diagnostics are only computed for those)."""
        args, step = self.args, self.state.global_step + 1
        if args.logging_strategy == IntervalStrategy.NO:
            return False
        if args.logging_strategy == IntervalStrategy.STEPS:
            every = self.state.logging_steps or 1
            return (args.logging_first_step and step == 1) or step % every == 0 or step == self.state.max_steps
        return True

    @torch.no_grad()
    def _record_training_diagnostics(self, model: nn.Module) -> None:
        """Clean / adversarial accuracy and routing change of the training batch (one eval-mode forward pass)."""
        step = self.step_state
        if step.main_attack is None:
            return
        x, y = step.pixel_values, step.labels
        x_adv = step.adversarial[step.main_attack]
        unwrapped = self.accelerator.unwrap_model(model)
        with attack_mode(unwrapped, grad=False):
            out = self.model_forward(unwrapped, torch.cat([x, x_adv]))
        clean_logits, adv_logits = out.logits.split(step.batch_size)
        self._accumulate("clean_accuracy", (clean_logits.argmax(-1) == y).float())
        self._accumulate("adv_accuracy", (adv_logits.argmax(-1) == y).float())
        if step.main_attack not in ("fgsm", "trades"):
            # FGSM accuracy next to the multi-step one, for the catastrophic-overfitting guard (see `log`).
            fgsm = self._fgsm_probe()
            x_fgsm = fgsm.perturb(unwrapped, x, y)
            with attack_mode(unwrapped, grad=False):
                fgsm_logits = self.model_forward(unwrapped, x_fgsm).logits
            self._accumulate("fgsm_accuracy", (fgsm_logits.argmax(-1) == y).float())
        if out.router_logits:
            clean_rl, adv_rl = split_router_logits(out.router_logits, step.batch_size)
            self._accumulate(
                "routing_change", routing_change_per_layer(clean_rl, adv_rl, [self.top_k()] * len(clean_rl)).mean()
            )

    def _fgsm_probe(self):
        if getattr(self, "_fgsm_attack", None) is None:
            self._fgsm_attack = build_attack("fgsm", eps=self.args.adv_eps, norm=self.args.adv_norm)
        return self._fgsm_attack

    def _check_catastrophic_overfitting(self, logs: dict[str, float]) -> None:
        """Warn (once) and log ``catastrophic_overfitting = 1`` when the training batch's multi-step adversarial
        accuracy collapses while its FGSM accuracy rises (Wong et al., 2020): the model has learned to defeat the
        single-step attack only, and its robustness is an illusion."""
        if "adv_accuracy" not in logs or "fgsm_accuracy" not in logs:
            return
        history = getattr(self, "_robustness_history", [])
        history.append((logs["adv_accuracy"], logs["fgsm_accuracy"]))
        self._robustness_history = history
        if catastrophic_overfitting(history):
            logs["catastrophic_overfitting"] = 1.0
            if not getattr(self, "_warned_catastrophic_overfitting", False):
                self._warned_catastrophic_overfitting = True
                logger.warning(
                    f"Catastrophic overfitting at step {self.state.global_step}: the training batch's adversarial "
                    f"accuracy fell to {logs['adv_accuracy']:.2f} while its FGSM accuracy rose to "
                    f"{logs['fgsm_accuracy']:.2f}. Use more attack steps, a random start, or a smaller step size, and "
                    "keep the checkpoint from before the collapse."
                )

    def _pop_training_metrics(self) -> dict[str, float]:
        """Means of the accumulated components since the last log, averaged over processes."""
        if not self._metric_sums:
            return {}
        names = sorted(self._metric_sums)
        means = torch.stack([self._metric_sums[n] / self._metric_counts[n] for n in names])
        if self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means, reduction="mean")
        self._metric_sums, self._metric_counts = {}, {}
        return {name: round(float(value), 6) for name, value in zip(names, means.tolist())}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the adversarial loss components and routing statistics to the training logs (means since the last
        log), and the robust-evaluation metrics to the evaluation logs, then log as `Trainer.log` does."""
        if "loss" in logs:
            logs.update(self._pop_training_metrics())
            self._check_catastrophic_overfitting(logs)
        for prefix in list(self._pending_eval_metrics):
            if f"{prefix}_runtime" in logs or f"{prefix}_loss" in logs:
                # In-place on purpose: `Trainer.evaluate` hands the same dict to the callbacks and returns it, so
                # robust metrics reach `on_evaluate` (early stopping) and best-checkpoint selection.
                logs.update(self._pending_eval_metrics.pop(prefix))
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------------

    def evaluate(
        self,
        eval_dataset=None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """`Trainer.evaluate` plus robust accuracy under ``args.eval_attacks``.

        On the first ``args.eval_max_samples`` clips, each attack of ``args.eval_attacks`` runs with
        ``eval_attack_eps`` (default ``adv_eps``) and ``eval_attack_steps``; the metrics
        ``{prefix}_clean_accuracy``, ``{prefix}_robust_accuracy_<attack>``, ``{prefix}_worst_case_accuracy`` (clips no
        attack fools) and, for MoE models, ``{prefix}_routing_change_<attack>``, the routing-relevance controls
        (``{prefix}_random_routing_accuracy``, ``{prefix}_learned_minus_random_routing``,
        ``{prefix}_forced_expert_<i>_accuracy``) and the frozen-routing controls
        (``{prefix}_adv_input_clean_routing_<attack>``, ``{prefix}_clean_input_adv_routing_<attack>``) are logged with
        the clean ones, so
        ``metric_for_best_model="eval_worst_case_accuracy"`` selects the most robust checkpoint. The full
        [`~hf_videomoe.evaluation.RobustnessReport`] is kept in ``trainer.robustness_report``. Sharded over processes.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, Mapping) and not isinstance(eval_dataset, str):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # recurses per dataset
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        if ignore_keys is None:
            config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", [])) + NON_PREDICTION_KEYS
        if self.args.eval_attacks and dataset is not None:
            self._pending_eval_metrics[metric_key_prefix] = self._robust_metrics(dataset, metric_key_prefix)
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._pending_eval_metrics.pop(metric_key_prefix, None)

    def _robust_metrics(self, dataset, prefix: str) -> dict[str, float]:
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        eps = args.adv_eps if args.eval_attack_eps is None else args.eval_attack_eps
        attacks = {
            name: {"name": name, **self.attack_kwargs(name, eps=eps, steps=args.eval_attack_steps, step_size=None)}
            for name in args.eval_attacks
        }
        start = time.time()
        robustness_args = RobustnessArguments(
            attacks=attacks,
            eps=eps,
            norm=args.adv_norm,
            steps=args.eval_attack_steps,
            seed=args.seed,
            batch_size=args.per_device_eval_batch_size,
            max_samples=args.eval_max_samples,
            diagnostics=self.is_moe,
            compute_cost=False,
            check_determinism=False,
            check_gradients=False,
            accelerator=self.accelerator if self.accelerator.num_processes > 1 else None,
            progress=False,
        )
        report = evaluate_robustness(model, dataset, robustness_args)
        self.robustness_reports[prefix] = report
        if prefix == "eval" or self.robustness_report is None:
            self.robustness_report = report
        metrics = {f"{prefix}_clean_accuracy": report.clean_accuracy, f"{prefix}_robust_runtime": time.time() - start}
        for name, value in report.robust_accuracy.items():
            metrics[f"{prefix}_{ROBUST_METRIC_PREFIX}{name}"] = value
        metrics[f"{prefix}_{WORST_CASE_METRIC}"] = report.worst_case_accuracy
        for name, value in (report.routing_change or {}).items():
            metrics[f"{prefix}_routing_change_{name}"] = value
        relevance = report.routing_relevance
        if relevance:
            metrics[f"{prefix}_random_routing_accuracy"] = relevance["random"]
            metrics[f"{prefix}_learned_minus_random_routing"] = relevance["learned_minus_random"]
            for expert, value in enumerate(relevance["forced"]):
                metrics[f"{prefix}_forced_expert_{expert}_accuracy"] = value
        for name, controls in (report.frozen_routing or {}).items():
            for key, value in controls.items():
                metrics[f"{prefix}_{key}_{name}"] = value
        return {key: float(value) for key, value in metrics.items()}

    # ------------------------------------------------------------------------------------------------------------------
    # Model card and Hub
    # ------------------------------------------------------------------------------------------------------------------

    def training_recipe(self) -> dict[str, Any]:
        """The training settings that matter for robustness, for the model card (JSON-serialisable)."""
        args = self.args
        recipe: dict[str, Any] = {"method": self.method_label, "trainer": type(self).__name__}
        other_prefixes = {m.argument_prefix for m in METHODS.values() if m.argument_prefix} - {
            self.method.argument_prefix
        }
        for key, value in args.adversarial_recipe().items():
            if key.split("_")[0] not in other_prefixes:  # leave out the settings of other methods
                recipe[key] = value
        recipe["adv_method"] = self.adv_method
        recipe.update(
            learning_rate=args.learning_rate,
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            num_processes=self.accelerator.num_processes,
            optimizer_steps=self.state.global_step,
            seed=args.seed,
        )
        runtimes = [log["train_runtime"] for log in self.state.log_history if "train_runtime" in log]
        if runtimes:
            recipe["train_runtime_s"] = round(float(runtimes[-1]), 1)
        phase_updates = self._adversarial_callback_state().phase_updates
        if phase_updates:
            recipe["phase_updates"] = dict(phase_updates)
        return recipe

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write ``README.md`` (and ``report.json``) in ``output_dir``.

        With a robustness report (from `evaluate` with ``eval_attacks``), the card is
        [`~hf_videomoe.hub.build_model_card`]'s: ``model-index`` metrics with worst-case, clean and per-attack robust
        accuracy, the robustness table and this trainer's recipe ([`training_recipe`]). Without one, Trainer's
        default card, tagged with the adversarial-training method.
        """
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags = list(dict.fromkeys([*tags, "adversarial-training", self.adv_method]))
        if self.robustness_report is None:
            return super().create_model_card(
                language=language, license=license, tags=tags, model_name=model_name, finetuned_from=finetuned_from,
                tasks=tasks, dataset_tags=dataset_tags, dataset=dataset, dataset_args=dataset_args,
            )  # fmt: skip
        if not self.is_world_process_zero():
            return None
        card = build_model_card(
            self.robustness_report,
            model_name=model_name or Path(self.args.output_dir).name,
            base_model=finetuned_from,
            dataset_name=dataset if isinstance(dataset, str) else None,
            training_recipe=self.training_recipe(),
            license=license or "apache-2.0",
            tags=tags,
            repo_id=self.hub_model_id,
            model_path=self.args.output_dir,  # the card sits in output_dir next to the weights
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))
        self.robustness_report.save(os.path.join(self.args.output_dir, "report.json"))
        return None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Upload the model with its robustness report and model card.

        With a robustness report (from `evaluate` with ``eval_attacks``), the checkpoint goes up in one commit through
        [`~hf_videomoe.hub.push_robust_checkpoint`]: weights, ``README.md`` with ``model-index`` robust-accuracy
        metrics and this trainer's recipe, ``report.json``, ``robustness_report.md`` and plots. The repo is
        ``repo_id`` (keyword), else ``args.hub_model_id``, else the name of ``output_dir``; ``endpoint`` selects another
        Hub-compatible server; other keyword arguments go to `build_model_card`. Uploads are blocking. Without a
        report, this is `Trainer.push_to_hub`.
        """
        if self.robustness_report is None:
            return super().push_to_hub(
                commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private,
                **kwargs,
            )  # fmt: skip
        args = self.args
        if not blocking:
            logger.warning("push_to_hub uploads robust checkpoints in one blocking commit; ignoring blocking=False.")
        self.callback_handler.on_push_begin(args, self.state, self.control)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        repo_id = kwargs.pop("repo_id", None) or self.hub_model_id or args.hub_model_id
        repo_id = repo_id or Path(args.output_dir).absolute().name
        return push_robust_checkpoint(
            self.model,
            repo_id,
            self.robustness_report,
            token=token if token is not None else args.hub_token,
            private=args.hub_private_repo if private is None else private,
            commit_message=None if commit_message == "End of training" else commit_message,
            revision=revision if revision is not None else args.hub_revision,
            model_name=kwargs.pop("model_name", None) or repo_id.split("/")[-1],
            training_recipe=kwargs.pop("training_recipe", None) or self.training_recipe(),
            **kwargs,
        )
