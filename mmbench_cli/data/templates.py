"""Prompt templates: the one source of the text format used by training data and few-shot evaluation.

The formats follow open_flamingo's evaluation prompts, so a model pre-trained on our data sees at
evaluation time exactly the format it was trained on:

- captioning: ``<image>Output: {caption}<|endofchunk|>``
- VQA:        ``<image>Question: {question} Short answer: {answer}<|endofchunk|>``

A few-shot prompt is the concatenation of demos followed by the query prompt (the demo format with the
answer left open). Interleaved documents become text with one ``<image>`` marker per image and an
``<|endofchunk|>`` closing the text that follows each image (as open_flamingo's MMC4 loader does).

The special tokens are defined here, once: the model side never imports them, it is handed
``SPECIAL_TOKENS`` by its caller (through ``mmbench_cli.data.synthetic.tokenizer_source``) and saves them
with the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from mmbench_cli.data.types import CaptionSample, Conversation, ImageRef, InterleavedDoc, TextDoc, VQASample

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"  # one slot per image token; the MLLM overwrites these positions with connector outputs
EOC_TOKEN = "<|endofchunk|>"  # ends the text after an image, as in Flamingo
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Role → string, in the order the BPE gets them (ids 0-3 of the synthetic tokenizer; changing it changes every
# trained tokenizer). The model side knows the roles (eos, pad, image, eoc), never the strings.
SPECIAL_TOKENS: Mapping[str, str] = MappingProxyType(
    {"eos": EOS_TOKEN, "pad": PAD_TOKEN, "image": IMAGE_TOKEN, "eoc": EOC_TOKEN}
)


def caption_demo(caption: str) -> str:
    """A captioning example as a training string or few-shot demo: ``<image>Output: {caption}<|endofchunk|>``."""
    return f"{IMAGE_TOKEN}Output: {caption.strip()}{EOC_TOKEN}"


def caption_prompt() -> str:
    """The captioning query: the demo format with the caption left for the model to generate."""
    return f"{IMAGE_TOKEN}Output:"


def vqa_demo(question: str, answer: str) -> str:
    """A VQA example: ``<image>Question: {question} Short answer: {answer}<|endofchunk|>``."""
    return f"{IMAGE_TOKEN}Question: {question.strip()} Short answer: {answer.strip()}{EOC_TOKEN}"


def vqa_prompt(question: str) -> str:
    """The VQA query: the demo format with the answer left for the model to generate."""
    return f"{IMAGE_TOKEN}Question: {question.strip()} Short answer:"


def text_qa(question: str, answer: str) -> str:
    """A question/answer pair in plain text (no image), used by the text corpus and text-only demos."""
    return f"Question: {question.strip()} Short answer: {answer.strip()}"


def majority_answer(answers: Sequence[str]) -> str:
    """The most frequent of the human answers (first one wins ties); the target for training and demos."""
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=lambda answer: (counts[answer], -list(counts).index(answer)))


def format_demo(sample: CaptionSample | VQASample, caption_index: int = 0) -> str:
    """A caption or VQA sample as a demo/training string (caption ``caption_index``; VQA's majority answer)."""
    if isinstance(sample, CaptionSample):
        return caption_demo(sample.captions[caption_index % len(sample.captions)])
    if isinstance(sample, VQASample):
        return vqa_demo(sample.question, majority_answer(sample.answers))
    raise TypeError(f"no demo format for {type(sample).__name__}")


def format_query(sample: CaptionSample | VQASample) -> str:
    """A caption or VQA sample as the query prompt that the model completes."""
    if isinstance(sample, CaptionSample):
        return caption_prompt()
    if isinstance(sample, VQASample):
        return vqa_prompt(sample.question)
    raise TypeError(f"no query format for {type(sample).__name__}")


def fewshot_prompt(demos: Sequence[CaptionSample | VQASample], query: CaptionSample | VQASample) -> str:
    """Demos then the query, as one string; the images are ``[d.image for d in demos] + [query.image]``."""
    return "".join(format_demo(demo) for demo in demos) + format_query(query)


def format_interleaved(doc: InterleavedDoc) -> tuple[str, list[ImageRef]]:
    """An interleaved document as (text with ``<image>`` markers, images in order of appearance).

    The text chunk right after an image is that image's text and is closed with ``<|endofchunk|>`` (as in
    few-shot prompts, so a caption-like passage reads exactly like a demo); other passages stand between.
    An image followed directly by another image (or the end) gets an empty chunk ``<image><|endofchunk|>``.
    """
    parts: list[str] = []
    images: list[ImageRef] = []
    after_image = False
    for chunk in doc.chunks:
        if isinstance(chunk, str):
            text = chunk.strip()
            if not text:
                continue
            if after_image:
                parts.append(text + EOC_TOKEN)
            else:
                parts.append((" " if parts and not parts[-1].endswith(EOC_TOKEN) else "") + text)
            after_image = False
        else:
            if after_image:
                parts.append(EOC_TOKEN)
            parts.append(IMAGE_TOKEN)
            images.append(chunk)
            after_image = True
    if after_image:
        parts.append(EOC_TOKEN)
    return "".join(parts), images


def conversation_segments(conversation: Conversation) -> list[tuple[str, bool]]:
    """A dialogue as (text, trained) pieces in the VQA format, one turn after another: the image and each
    ``Question: {q} Short answer:`` are context (no loss), each `` {answer}<|endofchunk|>`` is trained; the first turn
    reads exactly as ``vqa_demo``."""
    segments = [(IMAGE_TOKEN if conversation.image is not None else "", False)]
    for question, answer in conversation.turns:
        segments += [(f"Question: {question.strip()} Short answer:", False), (f" {answer.strip()}{EOC_TOKEN}", True)]
    return segments


def data_type_of(sample: CaptionSample | VQASample | InterleavedDoc | TextDoc | Conversation) -> str:
    """The mixture type of a sample: image-text pairs (captions, VQA) are ``caption``, dialogues ``instruction``."""
    if isinstance(sample, Conversation):
        return "instruction"
    if isinstance(sample, CaptionSample | VQASample):
        return "caption"
    if isinstance(sample, InterleavedDoc):
        return "interleaved"
    if isinstance(sample, TextDoc):
        return "text"
    raise TypeError(f"not a sample: {type(sample).__name__}")


def format_text(doc: TextDoc) -> str:
    """A text-only document as a training string."""
    return doc.text.strip()


def encode_interleaved(tokenizer: PreTrainedTokenizerBase, text: str, num_image_tokens: int) -> list[int]:
    """Token ids of ``text`` where each ``<image>`` marker becomes ``num_image_tokens`` image-token ids.

    No BOS/EOS are added; write ``<|endoftext|>`` into the text where a document ends. Special tokens are
    never split by the tokenizer, so a template's text encodes as is.
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expanded: list[int] = []
    for token_id in ids:
        if token_id == image_id:
            expanded.extend([image_id] * num_image_tokens)
        else:
            expanded.append(token_id)
    return expanded
