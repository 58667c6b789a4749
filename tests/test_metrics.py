"""Metric tests: the official VQA script's behaviour, VizWiz's eval, and pycocoevalcap's own outputs."""

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
    bootstrap_ci,
    caption_scores,
    caption_scores_per_sample,
    mean_std,
    normalize_answer,
    process_punctuation,
    vizwiz_accuracy,
    vqa_accuracy,
)


class OfficialVQAEval:
    """The official ``VQAEval.evaluate`` loop, transliterated for one question (answers as dicts with ids).

    Kept deliberately close to GT-Vision-Lab/VQA vqaEval.py (including the dict-identity leave-one-out and
    the ``re.UNICODE`` passed as ``count``) so our clean implementation is checked against its behaviour.
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
        gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
        res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
        res_ans = self.process_digit_article(self.process_punctuation(res_ans))
        if len({g["answer"] for g in gts}) > 1:
            for g in gts:
                g["answer"] = self.process_punctuation(g["answer"])
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
    assert vqa_accuracy("two", ten) == 1.0
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)  # 7x(3/3 ... ) → (7*1 + 3*2/3)/10
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)  # 8*(2/3) + 2*(1/3) over 10
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("4", ten) == 0.0
    assert vqa_accuracy("1,000", ["1000"] * 10) == 1.0


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


def test_caption_scores_bad_input() -> None:
    with pytest.raises(MMError, match="no predictions"):
        caption_scores_per_sample(REFS, {})
    with pytest.raises(MMError, match="no reference"):
        caption_scores_per_sample(REFS, {"9": "x"})
    with pytest.raises(MMError, match="unknown"):
        caption_scores_per_sample(REFS, CANDS, ("SPICE",))
