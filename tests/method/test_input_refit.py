"""The input projections' refit (``tune_masks(..., input_ridge=...)``): q/k/v and the MLP's inputs refit so that, on
the pruned model's hidden states, they produce what they produce on the dense model's."""

from __future__ import annotations

import pytest
import torch
from fastprune.common.method.tuning import tune_masks
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned
from fastprune.common.model.masks import Masks, masks_applied, weight_key, weights_applied
from fastprune.common.tasks.base import lookup_task
from tiny import tiny_llama

INPUTS = {"attention": ("query", "key", "value"), "ffn": ("ffn_gate", "ffn_in")}


def _batches(n=3, batch=4, length=12):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2 :] = 0
        out.append({"input_ids": torch.randint(5, 60, (batch, length), generator=g), "attention_mask": mask})
    return out


def _inputs(model, masks: Masks | None, batches):
    """Per layer and block, the input of the block's input projections over the real tokens (all batches)."""
    adapter = adapter_for(model)
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(adapter.layer_modules(model)):
        for block, names in INPUTS.items():

            def hook(_m, args, key=(i, block)):
                seen.setdefault(key, []).append(args[0])

            handles.append(adapter.linear(layer, names[0]).register_forward_pre_hook(hook, prepend=True))
    try:
        with torch.no_grad():
            for b in batches:
                if masks is None:
                    model(**b, use_cache=False)
                else:
                    with masks_applied(model, masks.head, masks.neuron), weights_applied(model, masks.weights):
                        model(**b, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    keep = torch.cat([b["attention_mask"].bool().flatten() for b in batches])
    return {k: torch.cat([x.flatten(0, 1) for x in v])[keep] for k, v in seen.items()}


def test_input_refit_matches_the_dense_projections_better_and_exports_exactly():
    model = tiny_llama(layers=3, hidden=32, heads=4, groups=2, intermediate=48)
    adapter = adapter_for(model)
    layers = adapter.layer_modules(model)
    g = torch.Generator().manual_seed(1)
    masks = Masks((torch.rand(3, 4, generator=g) > 0.4).float(), (torch.rand(3, 48, generator=g) > 0.5).float())
    masks.head[:, 0] = 1
    batches = _batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = lookup_task("causal-lm")
    tuned, _ = tune_masks(
        model, masks, None, batches, progress=False, mode="refit", ridge=1e-2, input_ridge=1e-3, task=task
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is left as it was
    assert tuned.equal(masks)
    for i in range(3):
        for names in INPUTS.values():
            assert all(weight_key(i, n, "weight") in tuned.weights for n in names)
    # the first attention block reads the embeddings in both models: nothing to correct
    for name in INPUTS["attention"]:
        original = adapter.linear(layers[0], name).weight
        assert torch.allclose(tuned.weights[weight_key(0, name, "weight")], original, atol=1e-5)
    student, dense = _inputs(model, tuned, batches), _inputs(model, None, batches)
    improved = 0
    for (i, block), x_s in student.items():
        x_t = dense[(i, block)]
        for name in INPUTS[block]:
            w = adapter.linear(layers[i], name).weight.detach()
            refit = tuned.weights[weight_key(i, name, "weight")]
            error_before = float((x_s @ w.T - x_t @ w.T).pow(2).sum())
            error_after = float((x_s @ refit.T - x_t @ w.T).pow(2).sum())
            assert error_after <= error_before * (1 + 1e-4) + 1e-6, (i, block, name)
            improved += error_after < 0.9 * error_before
    assert improved >= 10  # of 15 projections; layer 0's q/k/v had nothing to correct
    pruned = export_pruned(model, tuned)
    batch = batches[0]
    with torch.no_grad(), masks_applied(model, tuned.head, tuned.neuron), weights_applied(model, tuned.weights):
        expected = model(**batch, use_cache=False).logits
    with torch.no_grad():
        assert torch.allclose(pruned(**batch, use_cache=False).logits, expected, atol=1e-4)


def test_input_refit_needs_a_refit_mode():
    model = tiny_llama()
    masks = Masks.ones(adapter_for(model).dims(model.config))
    with pytest.raises(ValueError, match="input_ridge"):
        tune_masks(model, masks, None, _batches(n=1), progress=False, mode="scales", input_ridge=1.0)
