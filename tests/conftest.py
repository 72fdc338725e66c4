import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(1)  # tiny models: one thread is fastest and avoids oversubscription


@pytest.fixture
def tokenizer():
    from tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_sst2_model(tmp_path_factory) -> Path:
    """A tiny BERT trained for a few steps on the bundled SST-2 subset, saved as a model folder."""
    from tiny import trained_tiny_model

    return trained_tiny_model(tmp_path_factory.mktemp("tiny_sst2") / "model")


LONGEST = (
    "pipelines/test_pipeline_local.py",
    "stages/test_minilm.py",
    "stages/test_sweep.py",
    "cli/test_causal_lm_cli.py",
)
"""The files that take longest (minutes each), in that order."""


def _start_order(item: pytest.Item) -> tuple[int, int]:
    path = item.path.as_posix()
    longest = next((i for i, name in enumerate(LONGEST) if path.endswith(name)), len(LONGEST))
    return longest, 0 if any(item.get_closest_marker(m) for m in ("server", "slow")) else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then those with real servers or real models: under ``pytest -n`` (pytest-xdist,
    ``--dist loadfile``, which hands each worker the next file as it runs dry) they start at once instead of
    finishing last on one worker while the others are idle."""
    items.sort(key=_start_order)
