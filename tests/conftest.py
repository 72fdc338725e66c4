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
