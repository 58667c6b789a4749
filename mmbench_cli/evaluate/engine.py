"""The generic evaluation entry points: a model answers interleaved prompts, by generating or by scoring choices.

- ``generate_batch``: greedy (or beam) continuations of a batch of interleaved prompts (left-padded, KV cache);
- ``choice_loglikelihoods``: for each interleaved prompt, the log-likelihood of each of its choices as the
  continuation (lm-evaluation-harness's ``multiple_choice`` output type: sum of the continuation tokens'
  log-probabilities; right-padded batches, no attention mask needed in a causal LM);
- ``ImageFeatureCache``: LM-space image embeddings computed once per image key and shared by every prompt;
- ``EncoderFeatures``: RICES's similarity space from a separate CLIP-style encoder.

Prompts are text with one ``<image>`` marker per image (``mmbench_cli.data.templates``) and the images in order
of appearance. Task types decide what to ask; these functions only run the model, so other harnesses (an
lmms-eval bridge) can call them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from mmbench_cli.data.types import ImageRef
    from mmbench_cli.model.mllm import MLLM


class ImageFeatureCache:
    """LM-space image embeddings, computed once per image key (per model) and reused by every prompt."""

    def __init__(self, model: MLLM, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.features: dict[str, torch.Tensor] = {}
        self.computed = 0

    def ensure(self, images: Sequence[ImageRef]) -> None:
        """Encode the images whose keys are not cached yet (in batches)."""
        import torch

        from mmbench_cli.data.images import preprocess

        todo: dict[str, ImageRef] = {}
        for image in images:
            if image.key not in self.features and image.key not in todo:
                todo[image.key] = image
        refs = list(todo.values())
        device = next(self.model.parameters()).device
        for start in range(0, len(refs), self.batch_size):
            chunk = refs[start:start + self.batch_size]
            pixels = preprocess(chunk, self.model.image_size, self.model.image_mean, self.model.image_std)
            with torch.no_grad():
                embeds = self.model.encode_images(pixels.to(device))
            for ref, emb in zip(chunk, embeds, strict=True):
                self.features[ref.key] = emb
            self.computed += len(chunk)

    def stack(self, images: Sequence[ImageRef]) -> torch.Tensor:
        """[N, num_image_tokens, d] embeddings of ``images`` in order (computing any that are missing)."""
        import torch

        self.ensure(images)
        return torch.stack([self.features[image.key] for image in images])

    def pooled(self, images: Sequence[ImageRef]) -> torch.Tensor:
        """One vector per image (mean over its tokens) — the similarity space of RICES."""
        return self.stack(images).float().mean(dim=1)


class EncoderFeatures:
    """RICES's similarity space from a separate CLIP-style encoder (``eval.rices_encoder``), as open_flamingo's
    RICES uses CLIP image embeddings: one vector per image, computed once per image key (shared by checkpoints).
    """

    def __init__(self, spec: str, device: str, batch_size: int = 64) -> None:
        from mmbench_cli.model.encoders import load_similarity_encoder

        self.encoder = load_similarity_encoder(spec).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.features: dict[str, torch.Tensor] = {}

    def pooled(self, images: Sequence[ImageRef]) -> torch.Tensor:
        """[N, D] embeddings of ``images`` in order (at the encoder's own resolution and normalisation)."""
        import torch

        from mmbench_cli.data.images import preprocess

        todo = list({image.key: image for image in images if image.key not in self.features}.values())
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            pixels = preprocess(chunk, self.encoder.image_size, self.encoder.image_mean, self.encoder.image_std)
            with torch.no_grad():
                embeds = self.encoder(pixels.to(self.device))
            for ref, emb in zip(chunk, embeds, strict=True):
                self.features[ref.key] = emb.float()
        return torch.stack([self.features[image.key] for image in images])


def generate_batch(
    model: MLLM,
    prompts: Sequence[str],
    images: Sequence[Sequence[ImageRef]],
    cache: ImageFeatureCache,
    max_new_tokens: int,
    num_beams: int = 1,
    encoded: Sequence[list[int]] | None = None,
) -> tuple[list[str], int]:
    """Generate continuations of interleaved ``prompts`` (left-padded, KV cache); returns (texts, longest prompt).

    ``encoded``: the prompts' token ids when the caller has them already (``encode_interleaved`` of each prompt).
    """
    import torch

    from mmbench_cli.data.templates import encode_interleaved

    if encoded is None:
        encoded = [encode_interleaved(model.tokenizer, text, model.num_image_tokens) for text in prompts]
    longest = max(len(ids) for ids in encoded)
    device = next(model.parameters()).device
    input_ids = torch.full((len(encoded), longest), model.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids):] = 1
    flat_images = [image for row in images for image in row]
    image_embeds = cache.stack(flat_images) if flat_images else None
    new_tokens = model.generate(input_ids.to(device), attention_mask.to(device), image_embeds=image_embeds,
                                max_new_tokens=max_new_tokens, num_beams=num_beams)
    stops = {model.eoc_token_id, model.eos_token_id}
    rows = []
    for row in new_tokens.tolist():  # up to the first stop: the pads after it depend on when the batch stopped
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:end])
    return model.tokenizer.batch_decode(rows, skip_special_tokens=False), longest


def choice_loglikelihoods(
    model: MLLM,
    prompts: Sequence[str],
    images: Sequence[Sequence[ImageRef]],
    choices: Sequence[Sequence[str]],
    cache: ImageFeatureCache,
    batch_size: int = 64,
) -> list[list[float]]:
    """``result[i][j]``: log p(``choices[i][j]`` | interleaved ``prompts[i]`` with ``images[i]``), summed over the
    choice's tokens, as lm-eval scores a ``multiple_choice`` request (context and continuation encoded apart).

    Rows (one per prompt and choice) run in right-padded batches of ``batch_size``, longest first; a row's value
    does not depend on its batch.
    """
    scored = choice_scores(model, prompts, images, choices, cache, batch_size)
    return [[value for value, _ in row] for row in scored]


def choice_scores(
    model: MLLM,
    prompts: Sequence[str],
    images: Sequence[Sequence[ImageRef]],
    choices: Sequence[Sequence[str]],
    cache: ImageFeatureCache,
    batch_size: int = 64,
) -> list[list[tuple[float, bool]]]:
    """``choice_loglikelihoods`` with, for each choice, whether greedy decoding would produce it (every token the
    argmax): the pair an lm-eval / lmms-eval ``loglikelihood`` request returns."""
    import torch
    import torch.nn.functional as F

    from mmbench_cli.data.templates import encode_interleaved

    contexts = [encode_interleaved(model.tokenizer, text, model.num_image_tokens) for text in prompts]
    rows: list[tuple[int, int, list[int], list[int]]] = []  # (prompt, choice, context ids, continuation ids)
    for i, options in enumerate(choices):
        for j, option in enumerate(options):
            continuation = model.tokenizer(option, add_special_tokens=False)["input_ids"]
            if not continuation:
                raise ValueError(f"prompt {i}: choice {j} ({option!r}) encodes to no tokens")
            rows.append((i, j, contexts[i], continuation))
    results: list[list[tuple[float, bool]]] = [[(0.0, True)] * len(options) for options in choices]
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][2]) + len(rows[r][3])))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [rows[r] for r in order[start:start + batch_size]]
            width = max(len(context) + len(continuation) - 1 for _, _, context, continuation in chunk)
            input_ids = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
            for b, (_, _, context, continuation) in enumerate(chunk):
                whole = (context + continuation)[:-1]
                input_ids[b, :len(whole)] = torch.tensor(whole, dtype=torch.long)
            flat_images = [image for prompt, _, _, _ in chunk for image in images[prompt]]
            image_embeds = cache.stack(flat_images) if flat_images else None
            logits = model(input_ids.to(device), image_embeds=image_embeds).logits
            for b, (prompt, choice, context, continuation) in enumerate(chunk):
                positions = torch.arange(len(context) - 1, len(context) - 1 + len(continuation), device=logits.device)
                log_probs = F.log_softmax(logits[b, positions].float(), dim=-1)
                target = torch.tensor(continuation, device=logits.device).unsqueeze(-1)
                greedy = bool((log_probs.argmax(-1, keepdim=True) == target).all())
                results[prompt][choice] = (float(log_probs.gather(-1, target).sum()), greedy)
    return results
