"""Multiple-choice, CircularEval and POPE metrics against the reference implementations' own arithmetic.

lm-eval's ``multiple_choice`` output type scores ``acc`` as ``np.argmax(lls) == gold`` and ``acc_norm`` as
``np.argmax(lls / [len(choice)]) == gold``; POPE's ``evaluate.py`` is copied below (``_pope_reference``) and
run on the same answers.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.metrics import circular_accuracy, multiple_choice_scores, pope_answer, pope_scores


def _lm_eval_reference(lls: list[list[float]], gold: list[int], choices: list[list[str]]) -> dict[str, float]:
    acc = [float(np.argmax(ll) == g) for ll, g in zip(lls, gold, strict=True)]
    norm = [float(np.argmax(np.array(ll) / np.array([float(len(c)) for c in ch])) == g)
            for ll, g, ch in zip(lls, gold, choices, strict=True)]
    return {"acc": 100 * float(np.mean(acc)), "acc_norm": 100 * float(np.mean(norm))}


def test_multiple_choice_matches_lm_eval_arithmetic_on_random_cases() -> None:
    rng = random.Random(0)
    words = ["a", "circle", "red square", "tri", "an orange triangle"]
    for _ in range(50):
        n = rng.randint(1, 6)
        k = rng.randint(2, 5)
        lls = [[float(rng.choice([-1, -2, -3, -2.5, -4.0])) for _ in range(k)] for _ in range(n)]  # ties likely
        choices = [[rng.choice(words) for _ in range(k)] for _ in range(n)]
        gold = [rng.randrange(k) for _ in range(n)]
        assert multiple_choice_scores(lls, gold, choices) == pytest.approx(_lm_eval_reference(lls, gold, choices))


def test_multiple_choice_ties_go_to_the_first_option_and_acc_norm_divides_by_characters() -> None:
    # equal log-likelihoods: the first option wins, so gold 0 is right and gold 1 is wrong
    assert multiple_choice_scores([[-1.0, -1.0]], [0], [["x", "y"]]) == {"acc": 100.0, "acc_norm": 100.0}
    assert multiple_choice_scores([[-1.0, -1.0]], [1], [["x", "y"]]) == {"acc": 0.0, "acc_norm": 0.0}
    # -4 over 8 characters beats -3 over 1: acc picks option 1, acc_norm option 0
    scores = multiple_choice_scores([[-4.0, -3.0], [-4.0, -3.0]], [0, 1], [["circle!!", "a"], ["circle!!", "a"]])
    assert scores == {"acc": 50.0, "acc_norm": 50.0}
    assert multiple_choice_scores([[-4.0, -3.0]], [0], ["circle!!", "a"]) == {"acc": 0.0, "acc_norm": 100.0}


def test_multiple_choice_refuses_mismatched_lengths() -> None:
    with pytest.raises(MMError):
        multiple_choice_scores([[-1.0, -2.0]], [0, 1], [["a", "b"]])
    with pytest.raises(MMError):
        multiple_choice_scores([[-1.0, -2.0]], [0], [["a", "b", "c"]])


def test_circular_accuracy_needs_every_rotation_right() -> None:
    ids = [1, 1, 1, 1, 2, 2, 3]
    correct = [True, True, True, True, True, False, 1.0]
    assert circular_accuracy(ids, correct) == pytest.approx(200 / 3)
    assert circular_accuracy(["q"], [0.0]) == 0.0


def _pope_reference(answers: list[str], labels: list[str]) -> dict[str, float]:
    """RUCAIBox/POPE evaluate.py, as published (the file reading removed)."""
    answers = [{"answer": a} for a in answers]
    for answer in answers:
        text = answer["answer"]
        if text.find(".") != -1:
            text = text.split(".")[0]
        text = text.replace(",", "")
        words = text.split(" ")
        if "No" in words or "not" in words or "no" in words:
            answer["answer"] = "no"
        else:
            answer["answer"] = "yes"
    label_list = [0 if label == "no" else 1 for label in labels]
    pred_list = [0 if answer["answer"] == "no" else 1 for answer in answers]
    pos, neg = 1, 0
    yes_ratio = pred_list.count(1) / len(pred_list)
    tp = tn = fp = fn = 0
    for pred, label in zip(pred_list, label_list, strict=True):
        if pred == pos and label == pos:
            tp += 1
        elif pred == pos and label == neg:
            fp += 1
        elif pred == neg and label == neg:
            tn += 1
        elif pred == neg and label == pos:
            fn += 1
    precision = float(tp) / float(tp + fp)
    recall = float(tp) / float(tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    acc = (tp + tn) / (tp + tn + fp + fn)
    return {"accuracy": 100 * acc, "precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1,
            "yes_ratio": 100 * yes_ratio}


def test_pope_matches_the_official_script() -> None:
    rng = random.Random(1)
    pool = ["Yes", "yes", "No", "no.", "No, there is not.", "Yes, there is a dog. No cat.", "I do not know",
            "not sure", "Nope", "yes, no", "There is a dog.", "no\nway", "The answer is no", ""]
    for _ in range(40):
        n = rng.randint(4, 12)
        answers = [rng.choice(pool) for _ in range(n)]
        labels = [rng.choice(["yes", "no"]) for _ in range(n)]
        labels[:2] = ["yes", "no"]
        answers[0] = "Yes"  # keep the reference's precision/recall defined (it divides by zero otherwise)
        labels[0] = "yes"
        assert pope_scores(answers, labels) == pytest.approx(_pope_reference(answers, labels))


def test_pope_answer_parsing_and_undefined_scores() -> None:
    assert pope_answer("No, there is no cat.") == "no"
    assert pope_answer("Yes. No.") == "yes"  # only the first sentence counts
    assert pope_answer("NO") == "yes"  # POPE's words are case-sensitive: "NO" is not among them
    assert pope_answer("not,") == "no"  # commas dropped before splitting
    assert pope_answer("no\nway") == "yes"  # split on spaces only
    # every answer no: precision undefined -> 0, recall 0, F1 0
    scores = pope_scores(["no", "No"], ["yes", "no"])
    assert scores == {"accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    assert pope_scores(["yes"], [True])["accuracy"] == 100.0
