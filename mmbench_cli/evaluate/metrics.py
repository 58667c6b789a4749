"""Evaluation metrics, pure functions that reproduce the reference implementations exactly.

- ``vqa_accuracy``: the official VQA evaluation as it is today (GT-Vision-Lab/VQA
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at a013f00 "Fixed processing answers bug", which
  open_flamingo's ``vqa_metric.py`` copies and whose numbers Flamingo and MM1 report; used for VQAv2, OK-VQA
  and TextVQA). Prediction and human answers are stripped of newlines/tabs; then, *only when the 10 human
  answers are not all identical*, both the prediction and every human answer are normalised (punctuation,
  "1,000", periods not before digits, lower case, number words → digits, articles dropped, contractions
  restored). With 10 identical answers nothing is normalised: "Yes" scores 0 against ten "yes", "two" scores
  0 against ten "2". The score is min(#matching/3, 1) averaged over the 10 leave-one-out subsets.
  ``normalize="always"`` is the lenient variant (LLaVA's TextVQA evaluator; lmms-eval normalises the
  prediction always): prediction and human answers are normalised whatever the answers.
- ``vizwiz_accuracy``: VizWiz's official eval (its own punctuation list; the prediction is always
  normalised, human answers compared as given, so "unanswerable" is an ordinary answer string that counts
  when >= 3 humans gave it); ``vizwiz_answerability``: the average precision and F1 of the ``answerable``
  prediction, scored as VizWiz's ``evaluate_unanswerability`` (the positive class is *unanswerable*).
- ``caption_scores``: pycocoevalcap's CIDEr (CIDEr-D), BLEU-4, METEOR and ROUGE-L after its Java PTB
  tokenizer, with per-sample scores for bootstrap confidence intervals; ``cider_by_domain``: NoCaps's
  in-domain / near-domain / out-domain / entire CIDEr, each domain scored on its own as the nocaps evaluation.
- ``multiple_choice_scores``: lm-evaluation-harness's ``multiple_choice`` output type: ``acc`` (the option with
  the highest log-likelihood is the gold one) and ``acc_norm`` (log-likelihood divided by the option string's
  length in characters); ties go to the first option, as numpy's argmax. ``circular_accuracy``: MMBench's
  CircularEval (a question counts only when every rotation of its options is answered correctly).
- ``pope_scores``: POPE's ``evaluate.py`` (RUCAIBox/POPE): the answer's text before the first '.', commas
  dropped, split on spaces; "No", "not" or "no" among the words means *no*, anything else *yes*; *yes* is the
  positive class; accuracy, precision, recall, F1 and the ratio of *yes* answers, an undefined ratio being 0.

Quirks of the official script are kept on purpose (marked "as the official script") so that numbers match.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
import shutil
from collections.abc import Callable, Iterator, Sequence

from mmbench_cli.errors import MMError

# The official script's tables (GT-Vision-Lab/VQA master; data, not code).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
             "?", "!")
VIZWIZ_PUNCT = VQA_PUNCT  # VizWiz's eval ships the same list
# As the official script: the look-behind is mistyped as a look-ahead, so "(?!<=\d)" never fires and a
# period is stripped unless a digit follows it ("1.5" stays, "dog." and "3." lose it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
CAPTION_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")


def process_punctuation(text: str, punct: Sequence[str] = VQA_PUNCT) -> str:
    """The official ``processPunctuation``: drop or space out punctuation, strip periods not before digits.

    A mark is deleted when it touches a space anywhere in the input, or when the input has a digit-comma-digit
    ("1,000" → "1000"); otherwise it becomes a space ("black/white" → "black white").
    """
    out = text
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for mark in punct:
        if (mark + " " in text or " " + mark in text) or has_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # As the official script, which passes re.UNICODE (== 32) positionally as the *count* argument.
    return _PERIOD_STRIP.sub("", out, 32)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words → digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _strip_whitespace(text: str) -> str:
    """As the official script does to every answer first: newlines and tabs become spaces, ends stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str, punct: Sequence[str] = VQA_PUNCT) -> str:
    """The official script's full normalisation of an answer (punctuation, then digits/articles/contractions)."""
    return process_digit_article(process_punctuation(_strip_whitespace(text), punct))


def _leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    if not answers:
        raise MMError("vqa answers: empty list of human answers; every question needs at least one answer")
    per_subset = []
    for held_out in range(len(answers)):
        matching = sum(1 for j, answer in enumerate(answers) if j != held_out and answer == prediction)
        per_subset.append(min(1.0, matching / 3))
    return sum(per_subset) / len(per_subset)


VQA_NORMALIZE = ("official", "always")


def vqa_accuracy(prediction: str, answers: Sequence[str], normalize: str = "official") -> float:
    """VQA accuracy of one prediction against the human answers, in [0, 1] (the script reports 100x this).

    ``official``: as GT-Vision-Lab's current ``vqaEval.py``: whitespace is cleaned everywhere; prediction and
    answers are fully normalised only when the answers are not all identical (after the whitespace step).
    ``always``: prediction and answers are always fully normalised (the lenient variant).
    Returns the mean over the leave-one-out subsets of min(#humans in the subset giving the answer / 3, 1).
    The script leaves out one answer *dict* per subset (each has its own ``answer_id``); answers here are
    positional, which is the same as long as the ids are distinct, as in every released file.
    """
    prediction = _strip_whitespace(prediction)
    answers = [_strip_whitespace(answer) for answer in answers]
    if normalize == "always" or (normalize == "official" and len(set(answers)) > 1):
        prediction = normalize_answer(prediction)
        answers = [normalize_answer(answer) for answer in answers]
    elif normalize != "official":
        raise MMError(f"eval.vqa_normalize {normalize!r}: choose {' or '.join(VQA_NORMALIZE)}")
    return _leave_one_out_accuracy(prediction, answers)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz VQA accuracy, as VizWiz's official eval: like ``vqa_accuracy`` but human answers are used as given.

    "unanswerable" is an ordinary answer: predicting it scores when at least three humans marked the question
    unanswerable (and "unsuitable"/"unanswerable" are not merged).
    """
    prediction = normalize_answer(prediction, VIZWIZ_PUNCT)
    return _leave_one_out_accuracy(prediction, list(answers))


def predicted_answerable(prediction: str) -> float:
    """The ``answerable`` score implied by a generated VizWiz answer: 0 when it says "unanswerable", else 1."""
    return 0.0 if normalize_answer(prediction, VIZWIZ_PUNCT) == "unanswerable" else 1.0


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Average precision of ``scores`` for the binary ``labels`` (1 = positive), as scikit-learn's
    ``average_precision_score``: sum over score thresholds (high to low, ties together) of
    (recall gain) x precision. None when there is no positive label (undefined)."""
    positives = sum(1 for label in labels if label)
    if positives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    true_pos = false_pos = 0
    recall_before = value = 0.0
    for rank, index in enumerate(order):
        true_pos += 1 if labels[index] else 0
        false_pos += 0 if labels[index] else 1
        if rank + 1 < len(order) and scores[order[rank + 1]] == scores[index]:
            continue  # a tie: one threshold for all equal scores
        recall = true_pos / positives
        value += (recall - recall_before) * true_pos / (true_pos + false_pos)
        recall_before = recall
    return value


def f1_score(labels: Sequence[int], predicted: Sequence[int]) -> float:
    """F1 of binary predictions (1 = positive); 0 when there are neither positives nor positive predictions."""
    true_pos = sum(1 for y, p in zip(labels, predicted, strict=True) if y and p)
    wrong = sum(1 for y, p in zip(labels, predicted, strict=True) if bool(y) != bool(p))
    return 2 * true_pos / (2 * true_pos + wrong) if true_pos or wrong else 0.0


def vizwiz_answerability(answerable: Sequence[int | bool], predicted: Sequence[float]) -> dict[str, float] | None:
    """VizWiz's unanswerability scores of the ``answerable`` predictions (scores in [0, 1]), in [0, 1].

    As VizWiz's ``evaluate_unanswerability``: the positive class is *unanswerable* (labels ``1 - answerable``,
    scores ``1 - predicted``); ``average_precision`` over those scores and ``f1`` of ``1 - predicted > 0.5``.
    None when no question is unanswerable (average precision is undefined).
    """
    labels = [0 if flag else 1 for flag in answerable]
    scores = [1.0 - float(p) for p in predicted]
    precision = average_precision(labels, scores)
    if precision is None:
        return None
    return {"average_precision": precision, "f1": f1_score(labels, [int(s > 0.5) for s in scores])}


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer (for single-answer tasks), else 0.0."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(answer) for answer in answers))


def _check_java() -> None:
    if shutil.which("java") is None:
        raise MMError("caption metrics: `java` was not found on PATH; pycocoevalcap's PTB tokenizer and "
                      "METEOR need a Java runtime (e.g. apt install default-jre)")


def ptb_tokenize(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """Tokenise with pycocoevalcap's PTBTokenizer (Stanford CoreNLP, lower-cased, punctuation dropped).

    One Java call for the whole dict; each sentence is tokenised on its own line, so the result equals
    tokenising references and candidates separately (as ``COCOEvalCap`` does).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _check_java()
    wrapped = {key: [{"caption": text} for text in values] for key, values in texts.items()}
    with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr() as log:
        try:
            tokens = PTBTokenizer().tokenize(wrapped)
        except Exception as error:
            log.seek(0)
            raise MMError(f"PTB tokenizer (java) failed: {error}; {log.read()[-200:]}") from None
    if any(len(tokens.get(key, [])) != len(values) for key, values in texts.items()):
        raise MMError("PTB tokenizer (java) returned too few lines; is Java working? (java -version)")
    return tokens


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[io.TextIOBase]:
    """Send file descriptor 2 (the Java tokenizer's chatter) to a temp file for the duration of the block."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)


def caption_scores_per_sample(
    references: dict[str, list[str]],
    candidates: dict[str, str],
    metrics: Sequence[str] = CAPTION_METRICS,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus scores and per-sample scores ``{id: {metric: score}}`` from pycocoevalcap.

    Same procedure as ``pycocoevalcap.eval.COCOEvalCap``: PTB-tokenise references and candidates, then each
    scorer's ``compute_score``. CIDEr is CIDEr-D with document frequencies from this set's references (so a
    per-sample CIDEr depends on the evaluated set, as in the reference code).
    """
    unknown = [name for name in metrics if name not in CAPTION_METRICS]
    if unknown:
        raise MMError(f"caption metric {unknown[0]!r} unknown; choose from: {', '.join(CAPTION_METRICS)}")
    if not candidates:
        raise MMError("caption candidates: no predictions to score; pass at least one caption")
    missing = [key for key in candidates if key not in references]
    if missing:
        raise MMError(f"caption candidates: id {missing[0]!r} has no reference captions; check the ids")
    empty = [key for key in candidates if not references[key]]
    if empty:
        raise MMError(f"caption references: id {empty[0]!r} has no reference captions")
    ids = list(candidates)
    tagged = {f"r{i}": list(references[key]) for i, key in enumerate(ids)}
    tagged.update({f"c{i}": [candidates[key]] for i, key in enumerate(ids)})
    tokens = ptb_tokenize(tagged)
    gts = {key: tokens[f"r{i}"] for i, key in enumerate(ids)}
    res = {key: tokens[f"c{i}"] for i, key in enumerate(ids)}

    corpus: dict[str, float] = {}
    samples: dict[str, dict[str, float]] = {key: {} for key in ids}
    with contextlib.redirect_stdout(io.StringIO()):
        for name in metrics:
            score, per_sample = _score_one(name, gts, res)
            corpus[name] = float(score)
            for key, value in zip(gts.keys(), per_sample, strict=True):
                samples[key][name] = float(value)
    return corpus, samples


def _cider(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    from pycocoevalcap.cider.cider import Cider

    score, scores = Cider().compute_score(gts, res)
    return score, list(scores)


def _bleu_4(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    from pycocoevalcap.bleu.bleu import Bleu

    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    return score[3], list(scores[3])


def _rouge_l(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    from pycocoevalcap.rouge.rouge import Rouge

    score, scores = Rouge().compute_score(gts, res)
    return score, list(scores)


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    _check_java()
    meteor = Meteor()
    try:
        score, scores = meteor.compute_score(gts, res)
    finally:
        del meteor
    return score, list(scores)


# pycocoevalcap's scorers by the names COCOEvalCap reports them under
_COCO_SCORERS: dict[str, Callable[[dict[str, list[str]], dict[str, list[str]]], tuple[float, list[float]]]] = {
    "CIDEr": _cider, "Bleu_4": _bleu_4, "ROUGE_L": _rouge_l, "METEOR": _meteor,
}


def _score_one(name: str, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    return _COCO_SCORERS[name](gts, res)


NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")


def cider_by_domain(ids: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]],
                    domains: Sequence[str | None]) -> dict[str, float]:
    """NoCaps's CIDEr per domain (``in-domain``, ``near-domain``, ``out-domain``) and ``entire``, on the 0-1 scale.

    Each domain is scored on its own images (CIDEr-D's document frequencies from that domain's references), as
    the nocaps evaluation runs COCOEvalCap once per domain; one PTB tokenizer call serves every subset (it
    tokenises each sentence on its own line, so the tokens are the same). Domains with no image are left out.
    """
    tagged = {f"r{i}": list(refs) for i, refs in enumerate(references)}
    tagged.update({f"c{i}": [prediction] for i, prediction in enumerate(predictions)})
    tokens = ptb_tokenize(tagged)
    result: dict[str, float] = {}
    for domain in (*NOCAPS_DOMAINS, "entire"):
        chosen = [i for i in range(len(ids)) if domain == "entire" or domains[i] == domain]
        if not chosen:
            continue
        gts = {ids[i]: tokens[f"r{i}"] for i in chosen}
        res = {ids[i]: tokens[f"c{i}"] for i in chosen}
        with contextlib.redirect_stdout(io.StringIO()):
            result[domain] = float(_score_one("CIDEr", gts, res)[0])
    return result


def caption_scores(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """CIDEr, BLEU-4, METEOR and ROUGE-L of ``candidates`` (id → caption) against ``references`` (id → captions).

    Exactly pycocoevalcap's numbers (after its PTB tokenizer), on the 0-1 scale those scorers return
    (COCO papers print 100x). Use ``caption_scores_per_sample`` for per-sample scores.
    """
    corpus, _ = caption_scores_per_sample(references, candidates, CAPTION_METRICS)
    return corpus


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) — used for the spread over demo seeds."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def bootstrap_ci(
    scores: Sequence[float], confidence: float = 0.95, num_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-sample ``scores``."""
    if not scores:
        raise ValueError("bootstrap_ci of no scores")
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(num_resamples))
    lo = means[int((1 - confidence) / 2 * num_resamples)]
    hi = means[min(num_resamples - 1, int((1 + confidence) / 2 * num_resamples))]
    return lo, hi


# --------------------------------------------------------------------------- multiple choice, yes/no
def first_argmax(values: Sequence[float]) -> int:
    """The index of the largest value, the first one on ties (numpy's ``argmax``)."""
    if not values:
        raise MMError("multiple choice: a question has no options to choose from")
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def chosen_options(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(the option picked by log-likelihood, the option picked by log-likelihood per character) of one question.

    The per-character variant divides by ``len(choice)`` as lm-eval's ``acc_norm`` (an empty option counts as
    one character, so nothing is divided by zero).
    """
    if len(loglikelihoods) != len(choices):
        raise MMError(f"multiple choice: {len(loglikelihoods)} log-likelihoods for {len(choices)} options")
    normalized = [ll / max(1, len(choice)) for ll, choice in zip(loglikelihoods, choices, strict=True)]
    return first_argmax(list(loglikelihoods)), first_argmax(normalized)


def multiple_choice_scores(loglikelihoods: Sequence[Sequence[float]], gold: Sequence[int],
                           choices: Sequence[Sequence[str]] | Sequence[str]) -> dict[str, float]:
    """lm-eval's ``acc`` and ``acc_norm`` in percent over questions.

    ``loglikelihoods[i][j]``: the log-likelihood of option ``j`` of question ``i``; ``gold[i]``: the index of the
    right option; ``choices[i][j]``: the option's string (one list shared by every question is accepted too).
    """
    if not loglikelihoods:
        raise MMError("multiple choice: no questions to score")
    if len(gold) != len(loglikelihoods):
        raise MMError(f"multiple choice: {len(gold)} gold answers for {len(loglikelihoods)} questions")
    shared = bool(choices) and isinstance(choices[0], str)
    if not shared and len(choices) != len(loglikelihoods):
        raise MMError(f"multiple choice: {len(choices)} option lists for {len(loglikelihoods)} questions")
    hits = hits_norm = 0
    for index, (lls, answer) in enumerate(zip(loglikelihoods, gold, strict=True)):
        options = choices if shared else choices[index]
        picked, picked_norm = chosen_options(list(lls), [str(o) for o in options])  # type: ignore[union-attr]
        hits += picked == int(answer)
        hits_norm += picked_norm == int(answer)
    return {"acc": 100.0 * hits / len(gold), "acc_norm": 100.0 * hits_norm / len(gold)}


def circular_accuracy(question_ids: Sequence[str | int], correct: Sequence[bool | float]) -> float:
    """MMBench's CircularEval in percent: of the distinct questions (rotations share a question id), those whose
    every rotation is answered correctly."""
    if len(question_ids) != len(correct):
        raise MMError(f"circular accuracy: {len(question_ids)} question ids for {len(correct)} answers")
    if not question_ids:
        raise MMError("circular accuracy: no answers to score")
    solved: dict[str, bool] = {}
    for question, right in zip(question_ids, correct, strict=True):
        key = str(question)
        solved[key] = solved.get(key, True) and bool(right)
    return 100.0 * sum(solved.values()) / len(solved)


def pope_answer(text: str) -> str:
    """POPE's parsing of a free-form answer into ``yes`` or ``no`` (see the module docstring)."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def _yes_label(label: str | bool | int) -> int:
    """1 for a *yes* label (POPE: anything but "no"), 0 for *no*; booleans and 0/1 taken as they are."""
    if isinstance(label, bool | int):
        return int(bool(label))
    return 0 if str(label).strip().lower() == "no" else 1


def pope_scores(predictions: Sequence[str], labels: Sequence[str | bool | int]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 (yes is positive) and yes ratio, in percent (undefined ones: 0)."""
    if len(predictions) != len(labels):
        raise MMError(f"POPE: {len(predictions)} answers for {len(labels)} labels")
    if not predictions:
        raise MMError("POPE: no answers to score")
    predicted = [1 if pope_answer(str(p)) == "yes" else 0 for p in predictions]
    truth = [_yes_label(label) for label in labels]
    tp = sum(1 for p, t in zip(predicted, truth, strict=True) if p == 1 and t == 1)
    fp = sum(1 for p, t in zip(predicted, truth, strict=True) if p == 1 and t == 0)
    tn = sum(1 for p, t in zip(predicted, truth, strict=True) if p == 0 and t == 0)
    fn = sum(1 for p, t in zip(predicted, truth, strict=True) if p == 0 and t == 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / len(truth), "precision": 100.0 * precision, "recall": 100.0 * recall,
            "f1": 100.0 * f1, "yes_ratio": 100.0 * sum(predicted) / len(predicted)}


# ----------------------------------------------------------------- scorers named by families.METRICS
# Each takes (ids, predictions, references) and returns (corpus value, per-sample values) on the metric's raw
# scale; the caller multiplies by ``families.METRICS[name].scale``.
def cider(ids: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """Corpus CIDEr (pycocoevalcap, after PTB tokenization) and each sample's CIDEr."""
    refs = {i: list(r) for i, r in zip(ids, references, strict=True)}
    cands = dict(zip(ids, predictions, strict=True))
    corpus, per_sample = caption_scores_per_sample(refs, cands, ("CIDEr",))
    return corpus["CIDEr"], [per_sample[i]["CIDEr"] for i in ids]


def _mean_scorer(score: Callable[..., float]) -> Callable[..., tuple[float, list[float]]]:
    def scorer(ids: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]],
               **options: str) -> tuple[float, list[float]]:
        values = [score(p, list(r), **options) for p, r in zip(predictions, references, strict=True)]
        return sum(values) / len(values), values

    scorer.__doc__ = f"Mean {score.__name__} over the samples, and each sample's."
    return scorer


def option_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1 when the chosen option is the right one (its continuation string), else 0."""
    return float(prediction.strip() == answers[0].strip())


def pope_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1 when POPE's parsing of the answer equals the label (``answers[0]``: yes or no), else 0."""
    return float(pope_answer(prediction) == ("no" if answers[0].strip().lower() == "no" else "yes"))


def score_circular(ids: Sequence[str], predictions: Sequence[str],
                   references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """CircularEval over ids ``<question>#r<k>`` (rotations of one question): a question counts when every rotation
    is right; per sample, whether that rotation is right."""
    per_sample = [option_accuracy(p, r) for p, r in zip(predictions, references, strict=True)]
    questions = [re.sub(r"#r\d+$", "", str(i)) for i in ids]
    return circular_accuracy(questions, per_sample) / 100.0, per_sample


def score_pope_f1(ids: Sequence[str], predictions: Sequence[str],
                  references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """POPE's F1 (yes positive) over the answers; per sample, whether the parsed answer is right."""
    labels = [r[0] for r in references]
    per_sample = [pope_accuracy(p, [label]) for p, label in zip(predictions, labels, strict=True)]
    return pope_scores(list(predictions), labels)["f1"] / 100.0, per_sample


score_vqa_accuracy = _mean_scorer(vqa_accuracy)
score_vizwiz_accuracy = _mean_scorer(vizwiz_accuracy)
SCORERS: dict[str, Callable[..., tuple[float, list[float]]]] = {
    "cider": cider, "vqa_accuracy": score_vqa_accuracy, "vizwiz_accuracy": score_vizwiz_accuracy,
    "option_accuracy": _mean_scorer(option_accuracy), "circular_accuracy": score_circular,
    "pope_accuracy": _mean_scorer(pope_accuracy), "pope_f1": score_pope_f1,
}
# Scorers that take the ``normalize`` option (eval.vqa_normalize); the others ignore it.
NORMALIZING_SCORERS = ("vqa_accuracy",)
