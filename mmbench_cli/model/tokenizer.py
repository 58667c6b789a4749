"""Tokenizers: a byte-level BPE trained on a corpus the caller supplies, or a local checkpoint's tokenizer.

Either way the tokenizer carries four special tokens, known here by role only: ``image`` (one slot per
image token; the MLLM overwrites these positions with connector outputs), ``eoc`` (ends the text after an
image, as in Flamingo), ``eos`` and ``pad``. Their strings (and the corpus of the synthetic BPE) come from
the caller through a ``TokenizerSource``; ``mmbench_cli.data.synthetic.tokenizer_source`` makes the usual
one, so the model stack never imports the data stack. Special tokens are never split by the
pre-tokenizer, so prompt templates can be encoded as plain text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mmbench_cli.errors import MMError

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    from mmbench_cli.config import ModelConfig

# The roles of the special tokens, in the order the BPE trainer adds them (their ids 0-3 in a trained BPE).
SPECIAL_ROLES = ("eos", "pad", "image", "eoc")
TOKENIZER_VERSION = 1  # bump when the training recipe changes, so cached tokenizers are rebuilt


class TokenizerSource(Protocol):
    """What making a tokenizer needs from the caller (``mmbench_cli.data.synthetic.tokenizer_source``)."""

    @property
    def special_tokens(self) -> Mapping[str, str]:
        """Role (``eos``, ``pad``, ``image``, ``eoc``) → token string; every tokenizer gets these."""
        ...

    @property
    def cache_dir(self) -> str | None:
        """Where trained tokenizers are cached (None: the default cache root)."""
        ...

    def corpus(self) -> Sequence[str]:
        """The texts the ``synthetic-bpe`` is trained on; called on every synthetic build, so memoise it."""
        ...


def check_special_tokens(special_tokens: Mapping[str, str]) -> None:
    """ValueError unless ``special_tokens`` maps exactly the four roles to distinct non-empty strings."""
    if sorted(special_tokens) != sorted(SPECIAL_ROLES):
        raise ValueError(f"special tokens must have the roles {', '.join(SPECIAL_ROLES)}, got {', '.join(special_tokens)}")
    strings = [special_tokens[role] for role in SPECIAL_ROLES]
    if not all(strings) or len(set(strings)) != len(strings):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {strings}")


def hf_path(spec: str) -> Path | None:
    """The local directory named by ``hf:<dir>`` or by a bare path (anything with a ``/``), else None.

    Registry names never contain ``/``, so ``runs/enc/encoder`` is read as a directory (and a missing one is
    reported as such, not as an unknown registry name).
    """
    from mmbench_cli.config import is_local_path

    if not is_local_path(spec):
        return None
    return Path(spec.removeprefix("hf:")).expanduser()


# Files that say a checkpoint dir holds a tokenizer (fast, sentencepiece or GPT-2-style BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_tokenizer_spec(model_cfg: ModelConfig) -> str:
    """What ``model.tokenizer`` names once ``auto`` is decided: an hf: LM's own dir when it holds a tokenizer,
    else ``synthetic-bpe``; any other value as given."""
    if model_cfg.tokenizer != "auto":
        return model_cfg.tokenizer
    lm_dir = hf_path(model_cfg.lm)
    if lm_dir is not None and any((lm_dir / name).is_file() for name in TOKENIZER_FILES):
        return f"hf:{lm_dir}"
    return "synthetic-bpe"


def wrap_tokenizer(tokenizer_object: Tokenizer, special_tokens: Mapping[str, str]) -> PreTrainedTokenizerBase:
    """Wrap a ``tokenizers.Tokenizer`` holding the special tokens as a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token=special_tokens["eos"],
        bos_token=special_tokens["eos"],
        pad_token=special_tokens["pad"],
        extra_special_tokens=[special_tokens["image"], special_tokens["eoc"]],
        padding_side="left",
        model_max_length=1_000_000,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: Mapping[str, str]) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE (GPT-2/Pythia style) of ``vocab_size`` entries, special tokens included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_special_tokens(special_tokens)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_ROLES):
        raise MMError(
            f"model.vocab_size: {vocab_size} is too small for a byte-level BPE; "
            f"use at least {len(alphabet) + len(SPECIAL_ROLES)}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[special_tokens[role] for role in SPECIAL_ROLES],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer, special_tokens)


def _load_cached(directory: Path, special_tokens: Mapping[str, str]) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    # the cache key hashes the corpus, not the special tokens: an entry trained with other ones is stale
    if [tokenizer.id_to_token(i) for i in range(len(SPECIAL_ROLES))] != [special_tokens[r] for r in SPECIAL_ROLES]:
        raise ValueError(f"{directory}: cached tokenizer has other special tokens")
    return wrap_tokenizer(tokenizer, special_tokens)


# (vocab, special tokens, corpus digest, cache root) → tokenizer.json text
_IN_PROCESS: dict[tuple[int, tuple[str, ...], str, str], str] = {}


def synthetic_tokenizer(vocab_size: int, source: TokenizerSource) -> PreTrainedTokenizerBase:
    """The BPE trained on ``source.corpus()``, cached on disk by the corpus's content hash.

    Within one process the serialized tokenizer is also memoised, so building many models stays cheap.
    """
    from tokenizers import Tokenizer

    from mmbench_cli.rundir import atomic_write_text, cache_root

    special_tokens = source.special_tokens
    check_special_tokens(special_tokens)
    texts = source.corpus()
    digest = hashlib.sha256(f"v{TOKENIZER_VERSION}|{vocab_size}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    root = cache_root(source.cache_dir)
    key = (vocab_size, tuple(special_tokens[role] for role in SPECIAL_ROLES), digest.hexdigest(), str(root))
    if key in _IN_PROCESS:
        return wrap_tokenizer(Tokenizer.from_str(_IN_PROCESS[key]), special_tokens)
    directory = root / "tokenizers" / digest.hexdigest()[:16]
    if (directory / "tokenizer.json").exists():
        try:
            tokenizer = _load_cached(directory, special_tokens)
            _IN_PROCESS[key] = tokenizer.backend_tokenizer.to_str()
            return tokenizer
        except Exception:  # a corrupt or stale cache entry is rebuilt, never trusted
            pass
    tokenizer = train_tokenizer(texts, vocab_size, special_tokens)
    _IN_PROCESS[key] = tokenizer.backend_tokenizer.to_str()
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "tokenizer.json", tokenizer.backend_tokenizer.to_str())
    atomic_write_text(directory / "info.json", json.dumps({"vocab_size": vocab_size, "texts": len(texts)}))
    return tokenizer


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, special_tokens: Mapping[str, str]) -> PreTrainedTokenizerBase:
    """Give a checkpoint's tokenizer the image/chunk/pad tokens (keeping its own EOS if it has one)."""
    extra = [token for token in (special_tokens["image"], special_tokens["eoc"]) if token not in tokenizer.get_vocab()]
    if extra:
        tokenizer.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
    special: dict[str, str] = {}
    if tokenizer.pad_token is None:
        special["pad_token"] = special_tokens["pad"]
    if tokenizer.eos_token is None:
        special["eos_token"] = special_tokens["eos"]
    if special:
        tokenizer.add_special_tokens(special)
    tokenizer.padding_side = "left"
    return tokenizer


def load_hf_tokenizer(directory: str | Path, special_tokens: Mapping[str, str]) -> PreTrainedTokenizerBase:
    """A local checkpoint's tokenizer (no network) with the special tokens added."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise MMError(f"model.tokenizer: {directory} is not a directory; pass hf:<local checkpoint dir>")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MMError(f"model.tokenizer: {directory} holds no loadable tokenizer ({first[:160]})") from None
    return add_special_tokens(tokenizer, special_tokens)


def get_tokenizer(model_cfg: ModelConfig, source: TokenizerSource) -> PreTrainedTokenizerBase:
    """The tokenizer named by ``model.tokenizer``: ``synthetic-bpe`` (trained on ``source.corpus()``),
    ``hf:<local dir>``, or ``auto`` (``resolve_tokenizer_spec``); either way holding ``source.special_tokens``."""
    spec = resolve_tokenizer_spec(model_cfg)
    if spec == "synthetic-bpe":
        return synthetic_tokenizer(model_cfg.vocab_size, source)
    path = hf_path(spec)
    if path is None:
        raise MMError(f"model.tokenizer: unknown tokenizer {spec!r}; use auto, synthetic-bpe or hf:<local dir>")
    return load_hf_tokenizer(path, source.special_tokens)


def effective_special_tokens(tokenizer: PreTrainedTokenizerBase, special_tokens: Mapping[str, str]) -> dict[str, str]:
    """The special tokens a tokenizer really uses: ``special_tokens``' image and eoc, the tokenizer's own eos/pad
    (a checkpoint's tokenizer keeps its EOS)."""
    return {"eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
            "image": special_tokens["image"], "eoc": special_tokens["eoc"]}


def special_token_ids(tokenizer: PreTrainedTokenizerBase, special_tokens: Mapping[str, str]) -> dict[str, int]:
    """Ids of the special tokens by role (image, eoc, eos, pad), checked to be in the vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = {role: vocab.get(token) for role, token in effective_special_tokens(tokenizer, special_tokens).items()}
    missing = [role for role, token_id in ids.items() if token_id is None]
    if missing:
        raise MMError(f"tokenizer: it lacks the {missing[0]} token; use a tokenizer built by get_tokenizer")
    return {role: int(token_id) for role, token_id in ids.items() if token_id is not None}


def legacy_special_tokens(tokenizer: PreTrainedTokenizerBase, image_token_id: int) -> dict[str, str]:
    """The special tokens of a model saved before ``mm_config.json`` named them (format version 1).

    Those saves recorded the image token's id, and their tokenizers added the chunk token right after the
    image token (``extra_special_tokens``: image, eoc).
    """
    image = tokenizer.convert_ids_to_tokens(image_token_id)
    extras = [str(token) for token in tokenizer.extra_special_tokens]
    if image not in extras or extras.index(image) + 1 >= len(extras):
        raise ValueError("cannot tell the image and chunk tokens of this saved tokenizer")
    return {"eos": tokenizer.eos_token, "pad": tokenizer.pad_token, "image": image, "eoc": extras[extras.index(image) + 1]}

