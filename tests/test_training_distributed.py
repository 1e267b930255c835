"""J-TLAT under Accelerate with two real processes (``torchrun --nproc_per_node 2``, CPU, gloo backend).

The training script is written to ``tmp_path``; every rank records its rank, the world size and a hash of its state dict
after training. Two ranks must have run (world size 2), and DistributedDataParallel must have kept their weights
identical even though the router-only / expert-only passes, forced experts and experts without tokens leave parameters
unused in some passes (``ddp_find_unused_parameters=True``).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import hashlib, json, os, sys
import torch

import hf_videomoe
from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification
from hf_videomoe.data import make_moving_shapes
from hf_videomoe.training import AdversarialTrainingArguments, AdversarialTrainer, JTLATTrainer

out, variant = sys.argv[1], sys.argv[2]
method = "j-tlat" if variant.startswith("j-tlat") else variant
torch.set_num_threads(1)
torch.manual_seed(0)
config = VideoMAEMoeConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=8,
                           num_experts=4)
model = VideoMAEMoeForVideoClassification(config)
data = make_moving_shapes(48, num_frames=4, image_size=16, difficulty="easy", seed=0, test_size=16)
args = AdversarialTrainingArguments(
    output_dir=os.path.join(out, "run"), adv_method=method, adv_steps=1, max_steps=3, per_device_train_batch_size=4,
    gradient_accumulation_steps=2, learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to=[],
    use_cpu=True, seed=0, dataloader_num_workers=0, eval_attacks=["pgd"], eval_attack_steps=1, eval_max_samples=8,
    per_device_eval_batch_size=4, disable_tqdm=True, jtlat_reuse_adversarial=variant == "j-tlat-reuse",
)
trainer = (JTLATTrainer if method == "j-tlat" else AdversarialTrainer)(
    model=model, args=args, train_dataset=data["train"], eval_dataset=data["test"])
trainer.train()
metrics = trainer.evaluate()
state = trainer.accelerator.unwrap_model(trainer.model_wrapped).state_dict()
digest = hashlib.sha256()
for name in sorted(state):
    digest.update(name.encode())
    digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
record = {
    "rank": trainer.accelerator.process_index,
    "world_size": trainer.accelerator.num_processes,
    "env_world_size": int(os.environ["WORLD_SIZE"]),
    "ddp": type(trainer.model_wrapped).__name__,
    "hash": digest.hexdigest(),
    "log_keys": sorted(set().union(*(entry.keys() for entry in trainer.state.log_history))),
    "worst_case": metrics["eval_worst_case_accuracy"],
    "eval_loss": metrics["eval_loss"],
    "loss": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
}
with open(os.path.join(out, f"rank{record['rank']}.json"), "w") as f:
    json.dump(record, f)
# Leave without running C++ destructors: gloo's threads can abort a rank ("terminate called without an active
# exception") while the group is torn down, after the work is done, even after destroy_process_group (seen once in
# a full-suite CI run). Both ranks have written their records; the barrier makes sure neither leaves early.
if torch.distributed.is_initialized():
    torch.distributed.barrier()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def _torchrun() -> str:
    candidate = Path(sys.executable).with_name("torchrun")
    return str(candidate) if candidate.exists() else shutil.which("torchrun")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["j-tlat", "j-tlat-reuse", "advmoe"])
def test_two_processes_train_identical_weights(tmp_path, method):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    # --standalone: a local rendezvous on a free port chosen by torchrun itself.
    command = [_torchrun(), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), method]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and r["env_world_size"] == 2 for r in records)
    assert all(r["ddp"] == "DistributedDataParallel" for r in records)
    assert records[0]["hash"] == records[1]["hash"]  # DDP kept both replicas identical
    assert records[0]["eval_loss"] == records[1]["eval_loss"] and records[0]["eval_loss"] < 3.0  # a clean CE (not x2)
    assert records[0]["worst_case"] == records[1]["worst_case"]  # sharded robust evaluation, same report everywhere
    assert records[0]["loss"] == records[1]["loss"] and len(records[0]["loss"]) == 3
    expected = {"loss_router", "loss_expert"} | ({"loss_model", "lipschitz_expert"} if "j-tlat" in method else set())
    assert expected <= set(records[0]["log_keys"])
