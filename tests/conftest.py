"""Shared test set-up: offline Hugging Face, one cache dir per test session, few threads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Cache rendered images and trained tokenizers once per test session, outside the user's home."""
    if "MMBENCH_TEST_KEEP_CACHE" not in os.environ:
        os.environ["MMBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("mmbench-cache"))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: deterministic and far faster than 2 when other processes share the 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
