"""[`TrainingStage`]: the models of a reproduction, trained or read back from its cache: the clean dense baseline,
the upcycled mixture every MoE row starts from, and each row's adversarial training run.

A mixin of [`Reproduction`](runner.py), which provides what it uses: ``settings``, ``collator``, ``seed_dir``,
``split``, ``eval_set`` and ``label_names``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import Trainer

from ..attacks import expert_usage
from ..data import stack_pixel_values
from ..moe import cluster_routers
from ..reproducibility import reproducibility_record
from ..training import AdversarialTrainer, JTLATTrainer
from .checkpoints import checkpoint_cached, load_checkpoint, save_checkpoint
from .recipes import (
    PIXEL_MEAN,
    PIXEL_STD,
    NormalizingCollator,
    build_dense,
    eps_name,
    fold_input_normalization,
    log,
    read_json,
    training_arguments,
    upcycle,
)


class TrainingStage:
    # -- checkpoints -------------------------------------------------------------------------------------------------
    def dense_checkpoint(self, seed: int) -> Path:
        path = self.seed_dir(seed) / "dense-clean"
        if checkpoint_cached(path, path / "train.json"):
            return path
        s = self.settings
        log(f"seed {seed}: clean training of the dense baseline ({s.dense_epochs:g} epochs)")
        torch.manual_seed(seed)
        dense = build_dense(s, self.label_names)
        args = training_arguments(path / "trainer", s, epochs=s.dense_epochs, lr=s.dense_lr, seed=seed)
        start, cpu = time.perf_counter(), time.process_time()
        Trainer(
            model=dense, args=args, train_dataset=self.split("train"), data_collator=NormalizingCollator(self.collator)
        ).train()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # Fold the input normalisation into the weights and check that the function is unchanged.
        dense.eval()
        probe = self.collator([self.eval_set[i] for i in range(min(4, len(self.eval_set)))])["pixel_values"]
        with torch.no_grad():
            before = dense(pixel_values=(probe - PIXEL_MEAN) / PIXEL_STD).logits
            fold_input_normalization(dense)
            after = dense(pixel_values=probe).logits
        if not torch.allclose(before, after, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"folding the input normalisation changed the logits by {(before - after).abs().max()}")
        clean = self._clean_accuracy(dense)
        save_checkpoint(
            dense,
            path,
            path / "train.json",
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "epochs": s.dense_epochs,
                "clean_accuracy": clean,
                "reproducibility": reproducibility_record(),
            },
        )
        log(f"seed {seed}: dense baseline clean accuracy {100 * clean:.1f}% ({seconds:.0f}s)")
        return path

    def moe_checkpoint(self, seed: int) -> Path:
        path = self.seed_dir(seed) / "moe-upcycled"
        if checkpoint_cached(path, path / "train.json"):
            return path
        s = self.settings
        dense = self.load_start(seed, "dense")
        torch.manual_seed(seed)
        moe = upcycle(dense, s)
        if s.cluster_router_clips:
            cluster_routers(moe, stack_pixel_values(self.split("train"), s.cluster_router_clips), seed=seed)
        log(f"seed {seed}: mixture phase of the upcycled MoE ({s.moe_epochs:g} epochs, no attacks)")
        args = training_arguments(path / "trainer", s, epochs=s.moe_epochs, lr=s.moe_lr, seed=seed)
        start = time.perf_counter()
        Trainer(model=moe.train(), args=args, train_dataset=self.split("train"), data_collator=self.collator).train()
        seconds = time.perf_counter() - start
        save_checkpoint(
            moe,
            path,
            path / "train.json",
            {
                "seconds": seconds,
                "epochs": s.moe_epochs,
                "clean_accuracy": self._clean_accuracy(moe),
                "expert_usage": self.mixture_expert_usage(moe),
                "reproducibility": reproducibility_record(),
            },
        )
        return path

    def load_start(self, seed: int, start: str):
        """The dense baseline (``start="dense"``) or the upcycled mixture of ``seed``, trained if not cached."""
        path = self.dense_checkpoint(seed) if start == "dense" else self.moe_checkpoint(seed)
        return load_checkpoint(path, path / "train.json", self.settings, dense=start == "dense")

    def mixture_expert_usage(self, model) -> list[list[float]]:
        """Per MoE layer, the share of the test clips' routing units each expert gets (clean): the mixture's balance
        before any adversarial training, to compare with each trained row's report (``expert_usage["clean"]``)."""
        pixel_values = self.eval_set.pixel_values
        return [
            [round(float(x), 6) for x in layer]
            for layer in expert_usage(model.eval(), pixel_values, batch_size=self.settings.eval_batch_size)
        ]

    def _clean_accuracy(self, model) -> float:
        model.eval()
        correct = 0
        loader = torch.utils.data.DataLoader(
            self.eval_set, batch_size=self.settings.eval_batch_size, collate_fn=self.collator
        )
        with torch.no_grad():
            for batch in loader:
                correct += int((model(pixel_values=batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum())
        return correct / len(self.eval_set)

    # -- training ----------------------------------------------------------------------------------------------------
    def trained_model(
        self,
        seed: int,
        run_name: str,
        method: str,
        start: str,
        arg_overrides: dict,
        config_overrides: dict,
        epochs: float | None = None,
    ):
        """Train (or load the cached) model of one (seed, run) for ``epochs`` (default ``adv_epochs``); returns
        ``(model, train_info)``."""
        s = self.settings
        epochs = s.adv_epochs if epochs is None else epochs
        run_dir = self.seed_dir(seed) / run_name
        model_dir = run_dir / "model"
        info_path = run_dir / "train.json"
        if checkpoint_cached(model_dir, info_path):
            return load_checkpoint(model_dir, info_path, s, dense=start == "dense"), read_json(info_path)
        model = self.load_start(seed, start)
        for key, value in config_overrides.items():
            setattr(model.config, key, value)
        model.train()
        args = training_arguments(
            run_dir / "trainer",
            s,
            epochs=epochs,
            lr=s.adv_lr,
            seed=seed,
            adv_method=method,
            adv_eps=s.train_eps,
            adv_steps=s.adv_steps,
            **arg_overrides,
        )
        trainer_cls = JTLATTrainer if method == "j-tlat" else AdversarialTrainer
        log(
            f"seed {seed}: training {run_name} ({method}, {epochs:g} epochs, {s.adv_steps}-step attacks at "
            f"ε={eps_name(s.train_eps)})"
        )
        trainer = trainer_cls(model=model, args=args, train_dataset=self.split("train"), data_collator=self.collator)
        begin, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
        info = {
            "method": method,
            "run": run_name,
            "seed": seed,
            "seconds": seconds,
            "epochs": epochs,
            "seconds_per_epoch": seconds / epochs,
            "cpu_seconds": cpu,
            "cpu_seconds_per_epoch": cpu / epochs,
            "global_steps": trainer.state.global_step,
            "arg_overrides": arg_overrides,
            "config_overrides": config_overrides,
            "recipe": json.loads(json.dumps(trainer.training_recipe(), default=str))
            if hasattr(trainer, "training_recipe")
            else None,
            "reproducibility": reproducibility_record(),
        }
        info = save_checkpoint(model, model_dir, info_path, info)
        log(f"seed {seed}: {run_name} trained in {seconds:.0f}s")
        return model, info
