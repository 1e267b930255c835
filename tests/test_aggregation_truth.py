"""Clean, robust and worst-case accuracy against hand-written per-clip truth tables.

A lookup "model" reads which clip it sees (pixel 0) and which attack touched it (pixel 1, moved by a marker attack by
a known amount), and answers from a table written by hand. The expected accuracies below are counted by hand from the
same table, not recomputed with the evaluator's formulas, and the table has the clips that tell the definitions
apart: a clip wrong when clean and *right* under attack (it must not count as robust, nor in the worst case), a clip
each attack fools alone, and a clip both fool.
"""

import pytest
import torch
from datasets import Dataset
from torch import nn

from hf_videomoe.attacks import Attack
from hf_videomoe.evaluation import evaluate_robustness

LABELS = [0, 1, 2, 3, 0, 1, 2, 3]
# Prediction per clip: clean, under attack "a", under attack "b".
TABLE = [
    (0, 0, 0),  # 0: right clean, resists both                      -> robust to a, b; worst case
    (1, 0, 1),  # 1: right clean, fooled by a only                   -> robust to b
    (2, 2, 3),  # 2: right clean, fooled by b only                   -> robust to a
    (3, 0, 0),  # 3: right clean, fooled by both                     -> robust to neither
    (1, 0, 0),  # 4: WRONG clean, RIGHT under both attacks           -> robust to neither, not in the worst case
    (2, 3, 3),  # 5: wrong clean, wrong under both
    (3, 2, 3),  # 6: wrong clean, right under a only                 -> robust to neither
    (3, 3, 3),  # 7: right clean, resists both                      -> robust to a, b; worst case
]
# Counted by hand from the comments above.
CLEAN = 5 / 8  # clips 0, 1, 2, 3, 7
ROBUST = {"a": 3 / 8, "b": 3 / 8}  # a: 0, 2, 7; b: 0, 1, 7
WORST = 2 / 8  # 0, 7
WORST_PER_CLIP = [True, False, False, False, False, False, False, True]
# AutoAttack-style cascade (a first, then b on the clips still standing): cumulative accuracy after each attack, and
# the clips each attack runs on (a: the clips right when clean; b: those a left standing).
CASCADE = {"a": 3 / 8, "b": 2 / 8}
CASCADE_RUNS_ON = {"a": [0, 1, 2, 3, 7], "b": [0, 2, 7]}

CODES = {"a": 1, "b": 2}


class LookupModel(nn.Module):
    """Logits that put 5 on TABLE[clip][attack] for the clip id in pixel (0, 0, 0, 0) and the attack code in pixel
    (0, 0, 0, 1)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the evaluator finds a device

    def forward(self, pixel_values):
        clip = torch.round(pixel_values[:, 0, 0, 0, 0] * 100).long() - 1
        code = torch.round((pixel_values[:, 0, 0, 0, 1] - 0.5) / 0.01).long()
        table = torch.tensor(TABLE)
        pred = table[clip, code]
        return 5.0 * nn.functional.one_hot(pred, 4).float() + 0.0 * self.anchor + 0.0 * pixel_values.sum()


class Marker(Attack):
    """Moves pixel (0, 0, 0, 1) by ``code`` / 100 (within ε = 8/255): the lookup model then answers for that attack."""

    name = "marker"

    def __init__(self, code: int, **kwargs):
        super().__init__(**kwargs)
        self.code = code
        self.seen: list[int] = []  # ids of the clips this attack was run on

    def _attack(self, model, x, labels, target_labels, clean_outputs=None):
        self.seen += (torch.round(x[:, 0, 0, 0, 0] * 100).long() - 1).tolist()
        out = x.clone()
        out[:, 0, 0, 0, 1] = 0.5 + self.code * 0.01
        return out


@pytest.fixture(scope="module")
def dataset():
    pixels = torch.full((8, 2, 3, 4, 4), 0.5)
    pixels[:, 0, 0, 0, 0] = (torch.arange(8) + 1) / 100
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": LABELS}).with_format("torch")


def run(dataset, attacks=None, **kwargs):
    attacks = attacks if attacks is not None else {label: Marker(code) for label, code in CODES.items()}
    return evaluate_robustness(
        LookupModel(), dataset, attacks, batch_size=3, diagnostics=False, compute_cost=False, check_determinism=False,
        check_gradients=False, return_per_sample=True, progress=False, **kwargs,
    )  # fmt: skip


def test_the_lookup_model_answers_from_the_table(dataset):
    model = LookupModel()
    x = torch.stack(list(dataset["pixel_values"]))
    for column, code in ((0, 0), (1, 1), (2, 2)):
        marked = x.clone()
        marked[:, 0, 0, 0, 1] = 0.5 + code * 0.01
        assert model(marked).argmax(-1).tolist() == [row[column] for row in TABLE]


def test_full_evaluation_matches_the_truth_table(dataset):
    report = run(dataset)
    assert report.clean_accuracy == CLEAN
    assert report.robust_accuracy == ROBUST
    assert report.worst_case_accuracy == WORST
    assert report.per_sample["worst_case_correct"] == WORST_PER_CLIP
    assert report.per_sample["predictions"] == {"a": [r[1] for r in TABLE], "b": [r[2] for r in TABLE]}


def test_cascade_evaluation_matches_the_truth_table(dataset):
    attacks = {label: Marker(code) for label, code in CODES.items()}
    report = run(dataset, attacks, mode="cascade")
    assert {label: sorted(attack.seen) for label, attack in attacks.items()} == CASCADE_RUNS_ON
    assert report.clean_accuracy == CLEAN
    assert report.robust_accuracy == CASCADE
    assert report.worst_case_accuracy == WORST
    assert report.per_sample["worst_case_correct"] == WORST_PER_CLIP
