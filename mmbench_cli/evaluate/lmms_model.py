"""Our MLLM as an lmms-eval model (``--model mm``; registered by ``lmms_eval_hook.manifest``).

lmms-eval hands a "simple" model requests whose ``args`` are ``(context, gen_kwargs | continuation, doc_to_visual,
doc_id, task, split)``: the images come from ``doc_to_visual(doc)`` (PIL images), the text from the task's
``doc_to_text``. A prompt is the images' ``<image>`` slots followed by the context, as our 0-shot prompts put the
image first (``data.templates``); a context that already holds one ``<image>`` per image keeps its own placement.
Images go through the model's own preprocessing (``ImageFeatureCache`` → ``data.images.preprocess``), and the model
runs through ``mm eval``'s own entry points (``evaluate.engine``): ``generate_batch`` for answers (cut at our stop
strings and the task's ``until``), ``choice_scores`` for log-likelihoods (lmms-eval's ``multiple_choice`` too).

0 shots only: lmms-eval's few-shot demos are text (``mm lmms-eval`` refuses ``--num_fewshot``); interleaved k-shot is
``mm eval``'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmms_eval.api.model import lmms
from loguru import logger

from mmbench_cli.data.templates import IMAGE_TOKEN
from mmbench_cli.data.types import MemoryImage
from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.engine import ImageFeatureCache, choice_scores, generate_batch
from mmbench_cli.evaluate.fewshot import cut_at_stops

if TYPE_CHECKING:
    from mmbench_cli.model.mllm import MLLM

# model_args lmms-eval itself adds (from --batch_size, --max_batch_size, --device); others are refused
LMMS_EVAL_KEYS = frozenset({"max_batch_size"})
DEFAULT_MAX_NEW_TOKENS = 32
CACHED_IMAGES = 512  # image features kept between requests (multiple-choice options share their image)


class MMLMMs(lmms):
    """lmms-eval wrapper of an mmbench MLLM (``model_args``: ``path`` (alias ``pretrained``), ``batch_size``,
    ``device``). A path with commas (a grid cell) may be quoted or passed as it is, as for ``mm lm-eval``."""

    is_simple = True

    def __init__(self, path: str | None = None, model: MLLM | None = None, batch_size: int | str = 8,
                 device: str | None = "cpu", **kwargs: Any) -> None:
        super().__init__()
        if model is None:
            from mmbench_cli.evaluate.lm_eval_hook import load_model_from_args

            model = load_model_from_args(path, kwargs, LMMS_EVAL_KEYS, "path (alias pretrained), batch_size, device",
                                         device or "cpu", on_run_dir=_warn_run_dir)
        _keep_loglikelihood_pairs()
        self.model = model.eval()
        self.batch_size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else 8
        self.cache = ImageFeatureCache(self.model)
        self._warned: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> MMLMMs:
        """The model from ``--model_args``; what they name wins over lmms-eval's own ``--batch_size``/``--device``
        (lmms-eval passes both, and ``batch_size`` in ``model_args`` would otherwise be a duplicate keyword)."""
        from lmms_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    # ---- inputs ---------------------------------------------------------------------------------------
    def _images(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[MemoryImage]:
        """The document's images as keyed in-memory images (the key names task, split, document and position)."""
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = visuals if isinstance(visuals, list | tuple) else [visuals]
        images = []
        for index, visual in enumerate(v for v in visuals if v is not None):
            if not hasattr(visual, "convert"):
                raise MMError(f"task {task}: document {doc_id} gives a {type(visual).__name__} visual; model mm reads "
                              "images only (PIL images from doc_to_visual), not video or audio")
            images.append(MemoryImage(visual, key=f"lmms-eval/{task}/{split}/{doc_id}/{index}"))
        return images

    def _prompt(self, context: Any, num_images: int) -> str:
        """The interleaved prompt: the context as given if it already places every image, else the images first."""
        text = context[0] if isinstance(context, list) else str(context)
        if text.count(IMAGE_TOKEN) == num_images:
            return text
        return IMAGE_TOKEN * num_images + text.replace(IMAGE_TOKEN, "")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # ---- generation ---------------------------------------------------------------------------------
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy (or beam) answers in batches through ``mm eval``'s generation, cut at stop strings and ``until``."""
        outputs: list[str] = [""] * len(requests)
        for start in range(0, len(requests), self.batch_size):
            batch = list(range(start, min(start + self.batch_size, len(requests))))
            # requests of one batch share the generation settings of lmms-eval's first: group by them
            groups: dict[tuple[int, int], list[int]] = {}
            prompts, images, untils = {}, {}, {}
            for i in batch:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args[:6]
                gen_kwargs = dict(gen_kwargs or {})
                if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
                    self._warn_once("sampling", "model mm decodes greedily: do_sample/temperature are ignored")
                max_new = int(gen_kwargs.get("max_new_tokens") or gen_kwargs.get("max_gen_toks")
                              or DEFAULT_MAX_NEW_TOKENS)
                beams = int(gen_kwargs.get("num_beams") or 1)
                groups.setdefault((max_new, beams), []).append(i)
                images[i] = self._images(doc_to_visual, doc_id, task, split)
                prompts[i] = self._prompt(context, len(images[i]))
                until = gen_kwargs.get("until") or []
                untils[i] = [until] if isinstance(until, str) else list(until)
            for (max_new, beams), members in groups.items():
                texts, _ = generate_batch(self.model, [prompts[i] for i in members], [images[i] for i in members],
                                          self.cache, max_new, beams)
                for i, text in zip(members, texts, strict=True):
                    outputs[i] = _cut(text, untils[i])
            self._bound_cache()
        return outputs

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        """Multi-round chat tasks need a chat model; ours is a base MLLM."""
        raise MMError("model mm does not run multi-round (generate_until_multi_round) tasks: it is not a chat model")

    # ---- scoring ------------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | images + context), continuation is the greedy decode) per request, through
        ``mm eval``'s multiple-choice scoring (``engine.choice_scores``), in batches of requests."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        for start in range(0, len(requests), self.batch_size):
            prompts, images, continuations, rows = [], [], [], []
            for i in range(start, min(start + self.batch_size, len(requests))):
                args = requests[i].args
                if len(args) < 6:  # an unconditional request (acc_mutual_info): ("", choice), no images
                    (context, continuation), visuals = args[:2], []
                else:
                    context, target, doc_to_visual, doc_id, task, split = args[:6]
                    continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                    continuation = continuation[0] if isinstance(continuation, list) else continuation
                    visuals = self._images(doc_to_visual, doc_id, task, split)
                if not self.model.tokenizer(str(continuation), add_special_tokens=False)["input_ids"]:
                    continue  # nothing to score: log p = 0, trivially greedy
                # an empty context conditions on end-of-text, as lm-eval's models do
                prompt = self._prompt(context, len(visuals)) or self.model.tokenizer.eos_token
                prompts.append(prompt)
                images.append(visuals)
                continuations.append([str(continuation)])
                rows.append(i)
            if rows:
                scored = choice_scores(self.model, prompts, images, continuations, self.cache, self.batch_size)
                for i, (pair,) in zip(rows, scored, strict=True):
                    results[i] = pair
            self._bound_cache()
        return results

    def _bound_cache(self) -> None:
        if len(self.cache.features) > CACHED_IMAGES:
            self.cache.features.clear()


def _warn_run_dir(path: str, checkpoint: Any) -> None:
    """A run dir names no checkpoint: lmms-eval's ``--use_cache`` (keyed on ``model_args``) would mix checkpoints."""
    logger.warning(f"model mm: path={path} is a run dir; its last checkpoint {checkpoint} is evaluated. lmms-eval's "
                   "--use_cache keys responses on model_args: pass the checkpoint dir (mm lmms-eval does it for you)")


def _keep_loglikelihood_pairs() -> None:
    """Work around lmms-eval 0.7.3: its evaluator passes every model output through ``unwrap_generation_output``, which
    turns a loglikelihood request's ``(log p, is_greedy)`` pair into its ``str``, so every ``loglikelihood`` and
    ``multiple_choice`` task then fails in ``process_results``. Such pairs (tuples, or lists as its response cache
    returns them) pass through unchanged; nothing else is touched, and nothing at all where the bug is fixed."""
    import lmms_eval.evaluator as evaluator

    inner = evaluator.unwrap_generation_output
    if getattr(inner, "keeps_pairs", False) or not isinstance(inner((0.0, True))[0], str):
        return

    def unwrap(output: Any) -> tuple[Any, Any]:
        if (isinstance(output, tuple | list) and len(output) == 2 and isinstance(output[0], int | float)
                and isinstance(output[1], bool)):
            return output, None
        return inner(output)

    unwrap.keeps_pairs = True  # type: ignore[attr-defined]
    evaluator.unwrap_generation_output = unwrap


def _cut(text: str, until: Sequence[str]) -> str:
    """A generation up to our stop strings (end of chunk, end of text, a new line...) and the task's ``until``."""
    text = cut_at_stops(text)
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()
