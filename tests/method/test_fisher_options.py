"""Label-free (true) Fisher and its use by the stages."""

import pytest
import torch
from fastprune.common.method.fisher import collect_mask_gradients
from fastprune.common.model.loading import load_model
from fastprune.common.tasks.data import load_task_data, sample_dataset, task_batches
from fastprune.common.tasks.spec import get_task
from scipy.stats import spearmanr
from tiny import SST2, tiny_model


@pytest.fixture(scope="module")
def trained(tiny_sst2_model):
    task = get_task("sst2")
    model, tokenizer = load_model(tiny_sst2_model, task, "cpu")
    data = sample_dataset(load_task_data(SST2 / "train.tsv", task), 256, seed=0)
    return model, task_batches(data, tokenizer, task, 32)


def test_label_free_importance_ranks_units_like_the_labeled_one(trained):
    model, batches = trained
    labeled = collect_mask_gradients(model, batches, progress=False)
    free = collect_mask_gradients(model, batches, progress=False, labels="model")
    for kind in ("head", "neuron"):
        a = getattr(labeled, f"{kind}_importance")().flatten()
        b = getattr(free, f"{kind}_importance")().flatten()
        assert bool((b > 0).all()), kind
        rho = spearmanr(a.numpy(), b.numpy()).statistic
        assert rho > 0.7, (kind, rho)
        assert not torch.allclose(a, b)  # the labels really are drawn, not read


def test_label_free_needs_no_labels_and_is_seeded(trained):
    model, batches = trained
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches[:3]]
    with pytest.raises(ValueError, match="no loss"):
        collect_mask_gradients(model, unlabeled, progress=False)
    first = collect_mask_gradients(model, unlabeled, progress=False, labels="model", seed=1)
    again = collect_mask_gradients(model, batches[:3], progress=False, labels="model", seed=1)
    other = collect_mask_gradients(model, unlabeled, progress=False, labels="model", seed=2)
    assert torch.equal(first.head, again.head)  # labels in the batch are ignored
    assert not torch.equal(first.head, other.head)


@pytest.mark.parametrize("task", ["regression", "qa"])
def test_label_free_regression_and_qa(task):
    model = tiny_model(
        "bert", task="qa" if task == "qa" else "classification", num_labels=1 if task == "regression" else 2, layers=2
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(5, 200, (4, 12), generator=g),
            "attention_mask": torch.ones(4, 12, dtype=torch.long),
        }
        for _ in range(2)
    ]
    grads = collect_mask_gradients(model, batches, progress=False, labels="model")
    assert grads.head.shape[0] == 8
    assert bool((grads.head_importance() > 0).all()) and bool((grads.neuron_importance() > 0).all())
