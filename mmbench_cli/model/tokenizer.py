"""Tokenizers: a byte-level BPE trained on the synthetic world's corpus, or a local checkpoint's tokenizer.

Either way the tokenizer carries our four special tokens: ``<image>`` (one slot per image token; the MLLM
overwrites these positions with connector outputs), ``<|endofchunk|>`` (ends the text after an image, as
in Flamingo), ``<|endoftext|>`` and ``<|pad|>``. Special tokens are never split by the pre-tokenizer, so the
prompt templates of ``mmbench_cli.data.templates`` can be encoded as plain text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from mmbench_cli.config import DataConfig, ModelConfig

IMAGE_TOKEN = "<image>"
EOC_TOKEN = "<|endofchunk|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, EOC_TOKEN)
TOKENIZER_VERSION = 1  # bump when the training recipe changes, so cached tokenizers are rebuilt


def hf_path(spec: str) -> Path | None:
    """The local directory named by ``hf:<dir>`` or by a bare path (anything with a ``/``), else None.

    Registry names never contain ``/``, so ``runs/enc/encoder`` is read as a directory (and a missing one is
    reported as such, not as an unknown registry name).
    """
    if spec.startswith("hf:"):
        return Path(spec[3:]).expanduser()
    if "/" in spec or spec.startswith((".", "~")):
        return Path(spec).expanduser()
    return None


def wrap_tokenizer(tokenizer_object: Any) -> PreTrainedTokenizerBase:
    """Wrap a ``tokenizers.Tokenizer`` holding our special tokens as a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IMAGE_TOKEN, EOC_TOKEN],
        padding_side="left",
        model_max_length=1_000_000,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE (GPT-2/Pythia style) of ``vocab_size`` entries, special tokens included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise MMError(
            f"model.vocab_size: {vocab_size} is too small for a byte-level BPE; "
            f"use at least {len(alphabet) + len(SPECIAL_TOKENS)}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer)


def _load_cached(directory: Path) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer

    return wrap_tokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")))


_IN_PROCESS: dict[tuple[int, int, str], str] = {}  # (vocab, world seed, cache root) → tokenizer.json text


def synthetic_tokenizer(vocab_size: int, world_seed: int = 0, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """The BPE trained on ``data.synthetic.tokenizer_corpus(world_seed)``, cached by corpus content hash.

    Within one process the serialized tokenizer is also memoised, so building many models stays cheap.
    """
    from tokenizers import Tokenizer

    from mmbench_cli.data.synthetic import tokenizer_corpus
    from mmbench_cli.rundir import atomic_write_text, cache_root

    key = (vocab_size, world_seed, str(cache_root(cache_dir)))
    if key in _IN_PROCESS:
        return wrap_tokenizer(Tokenizer.from_str(_IN_PROCESS[key]))
    texts = list(tokenizer_corpus(world_seed))
    digest = hashlib.sha256(f"v{TOKENIZER_VERSION}|{vocab_size}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    directory = cache_root(cache_dir) / "tokenizers" / digest.hexdigest()[:16]
    if (directory / "tokenizer.json").exists():
        try:
            tokenizer = _load_cached(directory)
            _IN_PROCESS[key] = tokenizer.backend_tokenizer.to_str()
            return tokenizer
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            pass
    tokenizer = train_tokenizer(texts, vocab_size)
    _IN_PROCESS[key] = tokenizer.backend_tokenizer.to_str()
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "tokenizer.json", tokenizer.backend_tokenizer.to_str())
    atomic_write_text(
        directory / "info.json", json.dumps({"vocab_size": vocab_size, "world_seed": world_seed, "texts": len(texts)})
    )
    return tokenizer


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a checkpoint's tokenizer our image/chunk/pad tokens (keeping its own EOS if it has one)."""
    extra = [token for token in (IMAGE_TOKEN, EOC_TOKEN) if token not in tokenizer.get_vocab()]
    if extra:
        tokenizer.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
    special: dict[str, Any] = {}
    if tokenizer.pad_token is None:
        special["pad_token"] = PAD_TOKEN
    if tokenizer.eos_token is None:
        special["eos_token"] = EOS_TOKEN
    if special:
        tokenizer.add_special_tokens(special)
    tokenizer.padding_side = "left"
    return tokenizer


def load_hf_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """A local checkpoint's tokenizer (no network) with our special tokens added."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise MMError(f"model.tokenizer: {directory} is not a directory; pass hf:<local checkpoint dir>")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MMError(f"model.tokenizer: {directory} holds no loadable tokenizer ({first[:160]})") from None
    return add_special_tokens(tokenizer)


def get_tokenizer(model_cfg: ModelConfig, data_cfg: DataConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer named by ``model.tokenizer``: ``synthetic-bpe`` or ``hf:<local dir>``."""
    spec = model_cfg.tokenizer
    if spec == "synthetic-bpe":
        world_seed = data_cfg.world_seed if data_cfg is not None else 0
        cache_dir = data_cfg.cache_dir if data_cfg is not None else None
        return synthetic_tokenizer(model_cfg.vocab_size, world_seed, cache_dir)
    path = hf_path(spec)
    if path is None:
        raise MMError(f"model.tokenizer: unknown tokenizer {spec!r}; use synthetic-bpe or hf:<local dir>")
    return load_hf_tokenizer(path)


def encode_interleaved(tokenizer: PreTrainedTokenizerBase, text: str, num_image_tokens: int) -> list[int]:
    """Token ids of ``text`` where each ``<image>`` marker becomes ``num_image_tokens`` image-token ids.

    No BOS/EOS are added; write ``<|endoftext|>`` into the text where a document ends.
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


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of the special tokens the model and evaluation rely on."""
    return {
        "image": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "eoc": tokenizer.convert_tokens_to_ids(EOC_TOKEN),
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }


def count_images(texts: Sequence[str]) -> int:
    """Number of ``<image>`` markers in the texts (images must be passed in this order)."""
    return sum(text.count(IMAGE_TOKEN) for text in texts)
