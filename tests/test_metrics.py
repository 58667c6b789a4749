"""Metric tests: the official VQA script's behaviour, VizWiz's eval (accuracy and answerability), NoCaps's
per-domain CIDEr and pycocoevalcap's own outputs."""

from __future__ import annotations

import contextlib
import io
import random
import re
import shutil

import pytest

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate import metrics
from mmbench_cli.evaluate.metrics import (
    average_precision,
    bootstrap_ci,
    caption_scores,
    caption_scores_per_sample,
    cider_by_domain,
    f1_score,
    mean_std,
    normalize_answer,
    predicted_answerable,
    process_punctuation,
    vizwiz_accuracy,
    vizwiz_answerability,
    vqa_accuracy,
)


class OfficialVQAEval:
    """A behavioural model of the official ``VQAEval.evaluate`` loop for one question (answers as dicts with ids),
    as GT-Vision-Lab/VQA's vqaEval.py is today (a013f00, "Fixed processing answers bug"; open_flamingo's copy).

    Written close to that loop (the dict-identity leave-one-out, the ``re.UNICODE`` passed as ``count``, both
    sides normalised only when the answers disagree) so our clean implementation is checked against it.
    """

    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(\d)(\,)(\d)")
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def process_punctuation(self, in_text: str) -> str:
        out_text = in_text
        for p in self.punct:
            if (p + " " in in_text or " " + p in in_text) or (re.search(self.comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return self.period_strip.sub("", out_text, re.UNICODE)

    def process_digit_article(self, in_text: str) -> str:
        out = []
        for word in in_text.lower().split():
            word = metrics.NUMBER_WORDS.get(word, word)
            if word not in ("a", "an", "the"):
                out.append(word)
        return " ".join(metrics.CONTRACTIONS.get(w, w) for w in out)

    def score(self, res_ans: str, answers: list[str]) -> float:
        def clean(text: str) -> str:
            return text.replace("\n", " ").replace("\t", " ").strip()

        gts = [{"answer": clean(a), "answer_id": i + 1} for i, a in enumerate(answers)]
        res_ans = clean(res_ans)
        if len({g["answer"] for g in gts}) > 1:
            for g in gts:
                g["answer"] = self.process_digit_article(self.process_punctuation(g["answer"]))
            res_ans = self.process_digit_article(self.process_punctuation(res_ans))
        accs = []
        for datum in gts:
            others = [item for item in gts if item != datum]
            matching = [item for item in others if item["answer"] == res_ans]
            accs.append(min(1, float(len(matching)) / 3))
        return float(sum(accs)) / len(accs)


def test_normalisation_cases_from_the_official_script() -> None:
    assert normalize_answer("1,000") == "1000"  # digit-comma-digit: every punctuation mark is deleted
    assert normalize_answer("Two dogs.") == "2 dogs"  # number word → digit, trailing period stripped
    assert normalize_answer("3.5") == "3.5"  # period before a digit is kept
    assert normalize_answer("black/white") == "black white"  # punctuation not touching a space → space
    assert normalize_answer("yes !") == "yes"  # punctuation touching a space → deleted
    assert normalize_answer("The cat") == "cat" and normalize_answer("an apple") == "apple"
    assert normalize_answer("dont") == "don't" and normalize_answer("isnt") == "isn't"
    assert normalize_answer("  none\t") == "0"
    assert process_punctuation("hello, world") == "hello world"


def test_vqa_accuracy_leave_one_out() -> None:
    ten = ["2"] * 10
    assert vqa_accuracy("2", ten) == 1.0
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)  # 7x(3/3 ... ) → (7*1 + 3*2/3)/10
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)  # 8*(2/3) + 2*(1/3) over 10
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("4", ten) == 0.0


# (prediction, the 10 human answers, accuracy x100 as the official script prints it, with vqa_normalize=always).
# The official column is what GT-Vision-Lab/VQA's vqaEval.py at a013f00 printed for these cases when run on them
# as VQAv2 files (ported to Python 3 by fixing its print statements only); the comments say why.
TEN = 10
QUIRKS = [
    ("Yes", ["yes"] * TEN, 0.0, 100.0),  # 10 identical answers: nothing is normalised, not even the case
    ("yes", ["yes"] * TEN, 100.0, 100.0),
    ("Red", ["red"] * 9 + ["blue"], 100.0, 100.0),  # answers disagree: everything is normalised
    ("2", ["two"] * 8 + ["2"] * 2, 100.0, 100.0),  # number words in the answers become digits too
    ("2", ["two"] * TEN, 0.0, 100.0),  # ... but not when all ten agree
    ("two", ["2"] * TEN, 0.0, 100.0),
    ("dont", ["dont"] * 5 + ["don't"] * 5, 100.0, 100.0),  # contractions restored on both sides
    ("dont", ["don't"] * TEN, 0.0, 100.0),
    ("the dog", ["a dog"] * 3 + ["dog"] * 7, 100.0, 100.0),  # articles dropped on both sides
    ("black / white", ["black/white"] * 2 + ["black and white"] * 8, 60.0, 60.0),  # "/" touching a space: deleted
    ("1,000", ["1000"] * 7 + ["1,000"] * 3, 100.0, 100.0),  # digit-comma-digit: every mark deleted
    ("1,000", ["1000"] * TEN, 0.0, 100.0),
    ("3.", ["3"] * 9 + ["4"], 100.0, 100.0),  # a period not before a digit is stripped
    (" red\n", ["red"] * TEN, 100.0, 100.0),  # newlines, tabs and outer spaces always go
]


@pytest.mark.parametrize(("prediction", "answers", "official", "always"), QUIRKS)
def test_vqa_accuracy_quirks_of_the_current_official_script(prediction: str, answers: list[str], official: float,
                                                            always: float) -> None:
    assert 100 * vqa_accuracy(prediction, answers) == pytest.approx(official)
    assert 100 * vqa_accuracy(prediction, answers, "always") == pytest.approx(always)
    assert 100 * OfficialVQAEval().score(prediction, answers) == pytest.approx(official)


def test_vqa_normalize_rejects_unknown_modes() -> None:
    with pytest.raises(MMError, match="official or always"):
        vqa_accuracy("x", ["x"] * 10, "sometimes")


def test_vqa_accuracy_matches_the_official_loop_on_random_cases() -> None:
    official = OfficialVQAEval()
    vocab = ["2", "two", "yes", "Yes.", "1,000", "1000", "a dog", "dog", "black/white", "black white", "dont",
             "don't", "3.5", "none", "0", "red!", "red", "the cat.", "hello, world", "t-shirt", "tshirt"]
    rng = random.Random(0)
    for _ in range(400):
        answers = [rng.choice(vocab) for _ in range(10)]
        prediction = rng.choice(vocab)
        assert vqa_accuracy(prediction, answers) == pytest.approx(official.score(prediction, answers))


def test_vizwiz_unanswerable_is_an_ordinary_answer() -> None:
    answers = ["unanswerable"] * 4 + ["unsuitable"] * 2 + ["blue"] * 4
    assert vizwiz_accuracy("unanswerable", answers) == 1.0
    assert vizwiz_accuracy("Unanswerable.", answers) == 1.0  # the prediction is normalised
    assert vizwiz_accuracy("unsuitable", answers) == pytest.approx(0.6)
    # human answers are NOT punctuation-processed in VizWiz's eval (unlike VQAv2's when they disagree)
    assert vizwiz_accuracy("black white", ["black/white"] * 5 + ["x"] * 5) == 0.0
    assert vqa_accuracy("black white", ["black/white"] * 5 + ["x"] * 5) == 1.0


def test_vizwiz_answerability_as_the_official_eval() -> None:
    """VizWiz's evaluate_unanswerability: AP and F1 with *unanswerable* as the positive class."""
    answerable = [1, 1, 0, 1, 0, 0]
    predicted = [0.9, 0.2, 0.1, 0.8, 0.7, 0.3]  # unanswerable scores: 0.1, 0.8, 0.9, 0.2, 0.3, 0.7
    # ranked by unanswerable score: 0.9(+) 0.8(-) 0.7(+) 0.3(+) 0.2(-) 0.1(-): AP = (1 + 2/3 + 3/4) / 3
    scores = vizwiz_answerability(answerable, predicted)
    assert scores["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # 1 - predicted > 0.5 flags items 2, 3, 6 (two of them unanswerable, item 2 answerable); item 5 missed
    assert scores["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert vizwiz_answerability([1, 1], [0.5, 0.2]) is None  # no unanswerable question: AP undefined
    assert predicted_answerable("Unanswerable.") == 0.0 and predicted_answerable("soup") == 1.0
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)  # one threshold for ties


def test_average_precision_and_f1_equal_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(3)
    for _ in range(50):
        labels = [rng.randint(0, 1) for _ in range(rng.randint(2, 30))]
        if not any(labels):
            labels[0] = 1
        scores = [rng.choice((0.0, 0.25, 0.5, 1.0)) if rng.random() < 0.5 else rng.random() for _ in labels]
        assert average_precision(labels, scores) == pytest.approx(sklearn_metrics.average_precision_score(labels, scores))
        predicted = [int(s > 0.5) for s in scores]
        assert f1_score(labels, predicted) == pytest.approx(sklearn_metrics.f1_score(labels, predicted))


def test_empty_answer_list_is_a_user_error() -> None:
    with pytest.raises(MMError):
        vqa_accuracy("x", [])


def test_mean_std_and_bootstrap() -> None:
    assert mean_std([1.0]) == (1.0, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    lo, hi = bootstrap_ci([0.0] * 50 + [1.0] * 50, num_resamples=300)
    assert lo < 0.5 < hi and 0.3 < lo and hi < 0.7


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

REFS = {
    "1": ["A red circle on the left.", "a red circle", "There is one red circle."],
    "2": ["two blue squares at the top", "Two blue squares.", "there are two blue squares"],
    "3": ["a green triangle, small.", "one small green triangle", "green triangle in the middle"],
}
CANDS = {"1": "a red circle on the left", "2": "three green triangles", "3": "a small green triangle"}


def _reference_pipeline(refs: dict[str, list[str]], cands: dict[str, str]) -> dict[str, tuple[float, list[float]]]:
    """pycocoevalcap as COCOEvalCap runs it: tokenize gts and res separately, then each scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
        res = tok.tokenize({k: [{"caption": c}] for k, c in cands.items()})
        cider = Cider().compute_score(gts, res)
        bleu = Bleu(4).compute_score(gts, res, verbose=0)
        rouge = Rouge().compute_score(gts, res)
    return {"CIDEr": (cider[0], list(cider[1])), "Bleu_4": (bleu[0][3], bleu[1][3]), "ROUGE_L": (rouge[0], list(rouge[1]))}


@needs_java
def test_caption_scores_equal_pycocoevalcap() -> None:
    expected = _reference_pipeline(REFS, CANDS)
    corpus, samples = caption_scores_per_sample(REFS, CANDS, ("CIDEr", "Bleu_4", "ROUGE_L"))
    for name, (score, per_sample) in expected.items():
        assert corpus[name] == pytest.approx(score, abs=1e-12)
        assert [samples[k][name] for k in REFS] == pytest.approx(per_sample, abs=1e-12)
    assert samples["1"]["CIDEr"] > samples["3"]["CIDEr"] > samples["2"]["CIDEr"]


@needs_java
@pytest.mark.slow
def test_caption_scores_all_four_metrics() -> None:
    scores = caption_scores(REFS, CANDS)
    assert set(scores) == {"CIDEr", "Bleu_4", "METEOR", "ROUGE_L"}
    assert all(0.0 <= v for v in scores.values()) and 0.0 < scores["METEOR"] < 1.0
    perfect = caption_scores({"a": ["a red circle"], "b": ["two blue squares"]}, {"a": "a red circle", "b": "two blue squares"})
    assert perfect["METEOR"] > 0.9 and perfect["ROUGE_L"] == pytest.approx(1.0)


@needs_java
def test_cider_by_domain_scores_each_domain_on_its_own() -> None:
    """NoCaps: each domain's CIDEr is pycocoevalcap's CIDEr of that domain's images alone, plus the entire set."""
    ids = list(REFS) + ["4"]
    refs = {**REFS, "4": ["a yellow star", "one yellow star", "a small yellow star on top"]}
    cands = {**CANDS, "4": "a yellow star"}
    domains = ["in-domain", "near-domain", "near-domain", "out-domain"]
    scores = cider_by_domain(ids, [cands[i] for i in ids], [refs[i] for i in ids], domains)
    assert set(scores) == {"in-domain", "near-domain", "out-domain", "entire"}
    for domain in ("in-domain", "near-domain", "out-domain"):
        chosen = [i for i, d in zip(ids, domains, strict=True) if d == domain]
        expected = _reference_pipeline({i: refs[i] for i in chosen}, {i: cands[i] for i in chosen})["CIDEr"][0]
        assert scores[domain] == pytest.approx(expected, abs=1e-12)
    assert scores["entire"] == pytest.approx(_reference_pipeline(refs, cands)["CIDEr"][0], abs=1e-12)


def test_caption_scores_bad_input() -> None:
    with pytest.raises(MMError, match="no predictions"):
        caption_scores_per_sample(REFS, {})
    with pytest.raises(MMError, match="no reference"):
        caption_scores_per_sample(REFS, {"9": "x"})
    with pytest.raises(MMError, match="unknown"):
        caption_scores_per_sample(REFS, CANDS, ("SPICE",))
