"""Datasets of the synthetic text benchmarks, built from the synthetic world (``custom_dataset`` of evals/*.yaml).

lm-eval calls these with the task metadata: ``world_seed``, ``num_train_images``, ``num_test_images`` (set by
``mm eval`` from the run's config), or ``path``/``pretrained`` (lm-eval's ``model_args``; the run's ``config.yaml``
is read).
Items come from ``SyntheticWorld.text_tasks("test")``, held out from the training text.
"""

from __future__ import annotations

from typing import Any


def _world_items(kind: str, **metadata: Any) -> Any:
    import datasets

    from mmbench_cli.config import DataConfig
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.errors import MMError
    from mmbench_cli.evaluate.lm_eval_hook import model_path

    settings = DataConfig().model_dump()
    path, key, _ = model_path(metadata)  # path= (or pretrained=) of model_args, commas restored
    if path:
        from pathlib import Path

        from mmbench_cli.evaluate.runner import resolve_target

        try:
            settings.update(resolve_target(Path(path)).config.data.model_dump())
        except MMError:
            if key == "path":
                raise  # pretrained= may name another model kind's weights (lm-eval's hf): defaults then
    for key in ("world_seed", "num_train_images", "num_test_images"):
        if metadata.get(key) is not None:
            settings[key] = int(metadata[key])
    world = SyntheticWorld(seed=settings["world_seed"], num_train_images=settings["num_train_images"],
                           num_val_images=settings["num_val_images"], num_test_images=settings["num_test_images"],
                           cache_dir=settings.get("cache_dir"))
    items = world.text_tasks("test")[kind]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})


def load_cloze(**metadata: Any) -> Any:
    """LAMBADA-style items ``{context, target}``."""
    return _world_items("cloze", **metadata)


def load_facts(**metadata: Any) -> Any:
    """Multiple-choice items ``{question, choices, gold}``."""
    return _world_items("facts", **metadata)


def load_perplexity(**metadata: Any) -> Any:
    """Held-out documents ``{doc_id, text}``."""
    return _world_items("perplexity", **metadata)
