"""Adversarial training of (MoE) video classifiers with `transformers.Trainer`.

```python
from hf_videomoe.training import AdversarialTrainingArguments, AdversarialTrainer, JTLATTrainer

args = AdversarialTrainingArguments(output_dir="out", adv_method="pgd-at", adv_steps=5, eval_attacks=["pgd"])
AdversarialTrainer(model=model, args=args, train_dataset=train, eval_dataset=test).train()   # PGD-AT, TRADES, ...
JTLATTrainer(model=moe_model, args=AdversarialTrainingArguments(output_dir="out"), train_dataset=train).train()
```
"""

from .arguments import ADV_METHODS, JTLAT_STEPS, AdversarialTrainingArguments
from .callback import AdversarialTrainingCallback
from .jtlat import JTLATTrainer
from .method import TrainingMethod
from .methods import METHODS
from .phases import PhaseLoss, TrainingPhase
from .step import StepContext
from .trainer import AdversarialTrainer

__all__ = [
    "ADV_METHODS",
    "JTLAT_STEPS",
    "AdversarialTrainer",
    "AdversarialTrainingArguments",
    "AdversarialTrainingCallback",
    "JTLATTrainer",
    "METHODS",
    "PhaseLoss",
    "StepContext",
    "TrainingMethod",
    "TrainingPhase",
]
