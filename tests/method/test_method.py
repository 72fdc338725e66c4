"""The algorithm's stages on tiny models: Fisher, search, rearrangement, tuning."""

import math

import pytest
import torch
from fastprune.common.errors import ConfigError
from fastprune.common.method.fisher import MaskGradients, collect_mask_gradients
from fastprune.common.method.rearrange import (
    pruned_set_cost,
    rearrange_masks,
    rearrange_units,
    shrinkage,
)
from fastprune.common.method.search import search_flops
from fastprune.common.method.tuning import tune_masks
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.cost import dense_macs, flops_ratio, head_macs, masked_macs, neuron_macs
from fastprune.common.model.export import export_pruned
from fastprune.common.model.masks import Masks, masks_applied, pruning_applied, weights_applied
from tiny import tiny_model


def _batches(n=3, batch=4, length=10, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {
            "input_ids": torch.randint(5, 200, (batch, length), generator=g),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
        }
        b["attention_mask"][0, length // 2 :] = 0
        if labels:
            b["labels"] = torch.randint(0, 2, (batch,), generator=g)
        out.append(b)
    return out


def test_fisher_gradients_match_finite_differences():
    model = tiny_model("bert")
    batch = _batches(n=1)[0]
    grads = collect_mask_gradients(model, [batch], progress=False, per_example=False)
    dims = adapter_for(model).dims(model.config)
    assert grads.head.shape == (1, dims.num_layers, dims.num_heads)
    assert grads.neuron.shape == (1, dims.num_layers, dims.intermediate_size)
    assert all(p.requires_grad for p in model.parameters())  # restored after the pass

    def loss_at(layer, head, eps):
        masks = Masks.ones(dims)
        masks.head[layer, head] += eps
        with torch.no_grad(), masks_applied(model, masks.head, masks.neuron):
            return model(**batch).loss.double()

    for layer, head in [(0, 1), (2, 3)]:
        eps = 1e-3
        numeric = (loss_at(layer, head, eps) - loss_at(layer, head, -eps)) / (2 * eps)
        assert float(numeric) == pytest.approx(float(grads.head[0, layer, head]), rel=0.05, abs=1e-5)


def test_per_example_gradients_do_not_depend_on_batching():
    model = tiny_model("bert")
    batch = _batches(n=1, batch=4)[0]
    per_batch = collect_mask_gradients(model, [batch], progress=False, per_example=False)
    per_example = collect_mask_gradients(model, [batch], progress=False)
    assert per_example.head.shape[0] == 4
    # the batch loss is the mean of the examples' losses
    assert torch.allclose(per_example.head.mean(0), per_batch.head[0], atol=1e-6)
    assert torch.allclose(per_example.neuron.mean(0), per_batch.neuron[0], atol=1e-6)
    # the same examples in other batches (other padding) give the same rows
    halves = [{k: v[i : i + 2] for k, v in batch.items()} for i in (0, 2)]
    split = collect_mask_gradients(model, halves, progress=False)
    assert torch.allclose(split.head, per_example.head, atol=1e-5)
    assert torch.allclose(split.neuron, per_example.neuron, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "labels", "k"),
    [("bert", "data", 1), ("distilbert", "model", 1), ("mpnet", "data", 4)],  # MPNet's layers return tuples
)
def test_mask_gradients_from_carried_hidden_states_equal_the_full_pass(family, labels, k):
    """A pass that starts at layer k from the hidden states the (pruned) layers below give there yields the full
    pass's gradients for layers k and up, and skips the layers below (zero gradients, no compute)."""
    model = tiny_model(family, layers=k + 1)
    dims = adapter_for(model).dims(model.config)
    layers = adapter_for(model).layer_modules(model)
    batches = _batches(n=2)
    masks = Masks.ones(dims)
    masks.head[0, :2], masks.neuron[0, 10:] = 0, 0  # layer 0 pruned: layer k's inputs differ from the dense model's
    entering, calls = [], []
    handle = layers[k].register_forward_pre_hook(lambda _m, args: entering.append(args[0]))
    with torch.inference_mode(), masks_applied(model, masks.head, masks.neuron):
        for b in batches:
            model(**{key: v for key, v in b.items() if key != "labels"})
    handle.remove()
    full = collect_mask_gradients(model, batches, masks=masks, progress=False, labels=labels)
    counted = [
        adapter_for(model).linear(layer, "query").register_forward_pre_hook(lambda *_: calls.append(1))
        for layer in layers[:k]
    ]
    started = collect_mask_gradients(model, batches, masks=masks, progress=False, labels=labels, start=(k, entering))
    for handle in counted:
        handle.remove()
    assert not calls  # the layers below k did not run
    assert torch.allclose(started.head[:, k:], full.head[:, k:], atol=1e-5)
    assert torch.allclose(started.neuron[:, k:], full.neuron[:, k:], atol=1e-5)
    assert not started.head[:, :k].any() and not started.neuron[:, :k].any()
    assert full.head[:, k:].abs().sum() > 0
    assert all("forward" not in vars(layer) for layer in layers[:k])  # the layers are whole again
    with pytest.raises(ValueError, match="fewer hidden states"):
        collect_mask_gradients(model, batches, progress=False, start=(k, entering[:1]))


@pytest.mark.parametrize("constraint", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_search_respects_budget_and_keeps_most_important(constraint):
    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    g = torch.Generator().manual_seed(int(constraint * 10))
    head_imp = torch.rand(dims.num_layers, dims.num_heads, generator=g)
    neuron_imp = torch.rand(dims.num_layers, dims.intermediate_size, generator=g) * 0.1
    masks = search_flops(head_imp, neuron_imp, dims, 20.0, constraint)
    assert flops_ratio(masks, dims, 20.0) <= constraint + 1e-9
    # within each kind, every kept unit is at least as important as every pruned one
    for imp, mask in ((head_imp, masks.head), (neuron_imp, masks.neuron)):
        kept, pruned = imp[mask == 1], imp[mask == 0]
        if len(kept) and len(pruned):
            assert kept.min() >= pruned.max()
    # the split is optimal: brute force over the number of kept heads
    budget = constraint * dense_macs(dims, 20.0)
    hs = head_imp.flatten().sort(descending=True).values
    ns = neuron_imp.flatten().sort(descending=True).values
    best = max(
        float(
            hs[:k].sum()
            + ns[: min(len(ns), int((budget - k * head_macs(20.0, dims)) // neuron_macs(20.0, dims)))].sum()
        )
        for k in range(len(hs) + 1)
        if k * head_macs(20.0, dims) <= budget
    )
    got = float(head_imp[masks.head == 1].sum() + neuron_imp[masks.neuron == 1].sum())
    assert got == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("bad", [0, 1, -0.2, 1.5, math.nan])
def test_search_rejects_constraints_outside_unit_interval(bad):
    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        search_flops(torch.rand(3, 4), torch.rand(3, 64), dims, 20.0, bad)


def test_rearrangement_never_worse_and_keeps_counts():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = MaskGradients(torch.randn(16, 3, 6, generator=g), torch.randn(16, 3, 40, generator=g))
        # correlated units make the diagonal choice sub-optimal
        grads.neuron[:, :, :10] += grads.neuron[:, :, 10:20]
        dims = ModelDims(num_layers=3, num_heads=6, head_size=6, hidden_size=36, intermediate_size=40)
        masks = search_flops(grads.head_importance(), grads.neuron_importance(), dims, 10.0, 0.5)
        new = rearrange_masks(masks, grads)
        assert new.heads_per_layer() == masks.heads_per_layer()
        assert new.neurons_per_layer() == masks.neurons_per_layer()
        for kind in ("head", "neuron"):
            for layer in range(3):
                g_l = getattr(grads, kind)[:, layer]
                before = pruned_set_cost(g_l, getattr(masks, kind)[layer] == 0)
                after = pruned_set_cost(g_l, getattr(new, kind)[layer] == 0)
                assert after <= before + 1e-9


def test_rearrangement_finds_cancelling_pair():
    # unit 0 and 1 have large opposite gradients: pruning both costs nothing, so rearrangement
    # should prefer them over the individually small unit 2
    base = torch.randn(32, 1)
    grads = torch.cat([base * 3, -base * 3, base * 0.5, base * 4 + 1], dim=1)  # [B, 4]
    mg = MaskGradients(torch.zeros(32, 1, 1), grads[:, None, :])
    masks = Masks(torch.ones(1, 1), torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
    masks.neuron[0, 1] = 0.0  # diagonal choice: prune units 1 and 2
    new = rearrange_masks(masks, mg)
    assert new.neuron[0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_shrinkage_is_high_for_noise_and_low_for_real_correlation():
    g = torch.Generator().manual_seed(0)
    independent = torch.randn(64, 200, generator=g)  # independent units: every sampled correlation is noise
    assert shrinkage(independent) > 0.8
    shared = torch.randn(64, 1, generator=g)  # units that move together: the correlations are real
    assert shrinkage(shared + 0.1 * torch.randn(64, 200, generator=g)) < 0.05


def test_shrinkage_is_the_same_with_more_rows_than_units_and_fewer():
    def reference(g: torch.Tensor) -> float:  # the Ledoit-Wolf weight straight from its definition
        g, r = g.double(), g.shape[0]
        products = g[:, :, None] * g[:, None, :]  # [R, N, N]: each row's g_i g_j
        s = products.mean(0)
        variance = products.var(0, unbiased=True) / r
        off = ~torch.eye(g.shape[1], dtype=torch.bool)
        return float((variance[off].sum() / s[off].pow(2).sum()).clamp(0, 1))

    g = torch.Generator().manual_seed(1)
    for rows, units in ((300, 12), (12, 40)):  # the N x N Gram, then the R x R one
        grads = torch.randn(rows, 1, generator=g) + torch.randn(rows, units, generator=g)
        assert shrinkage(grads) == pytest.approx(reference(grads), rel=1e-9)


def test_full_shrinkage_keeps_the_diagonal_choice_and_none_finds_the_cancelling_pair():
    base = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))
    grads = torch.cat([base * 3, -base * 3.1, base * 0.5, base * 4 + 1], dim=1)  # units 0 and 1 cancel
    kept = torch.tensor([False, True, False, True])  # the diagonal choice prunes units 0 and 2
    assert rearrange_units(kept, grads, shrink=0.0).tolist() == [False, False, True, True]
    assert rearrange_units(kept, grads, shrink=1.0).tolist() == [False, True, False, True]
    assert rearrange_units(kept, grads, shrink="auto").tolist() == [False, False, True, True]  # a real correlation


def _measured_block_errors(model, masks, teacher, batches, cls_only):
    """Independent check of tuning: run teacher and student models fully and measure each block's
    squared reconstruction error of the pre-LayerNorm output on the real tokens."""
    adapter = adapter_for(model)
    layers = adapter.layer_modules(model)
    last = len(layers) - 1

    def capture(m):
        store, handles = {}, []
        for i, layer in enumerate(layers):
            for res, out, name in (("query", "attn_out", "attention"), ("ffn_in", "ffn_out", "ffn")):
                handles.append(
                    adapter.linear(layer, res).register_forward_pre_hook(
                        lambda _m, a, k=(i, name): store.__setitem__(("res",) + k, a[0])
                    )
                )
                handles.append(
                    adapter.linear(layer, out).register_forward_hook(
                        lambda _m, _a, o, k=(i, name): store.__setitem__(("out",) + k, o)
                    )
                )
        return store, handles

    errors = {}
    for batch in batches:
        outs = []
        for m in (teacher, masks):
            store, handles = capture(m)
            with torch.no_grad(), masks_applied(model, m.head, m.neuron), weights_applied(model, m.weights):
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            for h in handles:
                h.remove()
            outs.append(store)
        keep = batch["attention_mask"].bool()
        for i in range(len(layers)):
            k = keep.clone()
            if cls_only and i == last:
                k[:] = False
                k[:, 0] = True
            for name in ("attention", "ffn"):
                t = outs[0][("out", i, name)] + outs[0][("res", i, name)]
                s = outs[1][("out", i, name)] + outs[1][("res", i, name)]
                errors[(i, name)] = errors.get((i, name), 0.0) + float((t - s)[k].double().pow(2).sum())
    return errors


@pytest.mark.parametrize("family", ["bert", "distilbert"])
@pytest.mark.parametrize("policy", ["stop", "ridge"])
def test_tuning_lowers_each_tuned_blocks_error(family, policy):
    model = tiny_model(family, layers=3, hidden=32, heads=4, intermediate=64)
    dims = adapter_for(model).dims(model.config)
    g = torch.Generator().manual_seed(3)
    masks = Masks((torch.rand(3, 4, generator=g) > 0.4).float(), (torch.rand(3, 64, generator=g) > 0.5).float())
    teacher = Masks.ones(dims)
    batches = _batches(n=4, labels=False)
    tuned, reports = tune_masks(model, masks, teacher, batches, policy=policy, progress=False)
    assert tuned.binary().equal(masks)  # tuning never changes which units are kept
    tuned_blocks = [r for r in reports if r.tuned]
    assert tuned_blocks, "nothing was tuned"
    measured = _measured_block_errors(model, tuned, teacher, batches, cls_only=True)
    for r in reports:
        assert measured[(r.layer, r.block)] == pytest.approx(r.error_after, rel=1e-3, abs=1e-6)
        if r.tuned:
            assert r.error_after < r.error_before
            assert r.max_abs_scale <= 10.0
        else:
            assert r.error_after == r.error_before
    if policy == "ridge":
        assert all(r.tuned for r in reports if (masks.head if r.block == "attention" else masks.neuron)[r.layer].any())


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_refit_tuning_lowers_every_blocks_error_and_exports_exactly(family):
    from fastprune.common.model.export import export_pruned

    model = tiny_model(family, layers=3, hidden=32, heads=4, intermediate=64)
    g = torch.Generator().manual_seed(3)
    masks = Masks((torch.rand(3, 4, generator=g) > 0.4).float(), (torch.rand(3, 64, generator=g) > 0.5).float())
    masks.head[1] = 0  # a layer without heads stays untouched
    batches = _batches(n=4, labels=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refit, reports = tune_masks(model, masks, None, batches, progress=False, mode="refit", ridge=1e-3)
    scaled, scale_reports = tune_masks(model, masks, None, batches, progress=False, mode="scales", ridge=1e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is left as it was
    assert refit.equal(masks)  # binary: the scales are folded into the refit weights
    measured = _measured_block_errors(
        model, refit, Masks.ones(adapter_for(model).dims(model.config)), batches, cls_only=False
    )
    for r in reports:
        kept = (masks.head if r.block == "attention" else masks.neuron)[r.layer].any()
        assert r.tuned == bool(kept), r
        assert measured[(r.layer, r.block)] == pytest.approx(r.error_after, rel=1e-3, abs=1e-6)
        if r.tuned:
            assert r.error_after < r.error_before
    assert reports[0].error_after <= scale_reports[0].error_after  # same inputs: refit is the richer model
    assert len(refit.weights) == 2 * sum(r.tuned for r in reports)  # weight and bias of each refit projection
    pruned = export_pruned(model, refit)
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad(), masks_applied(model, refit.head, refit.neuron), weights_applied(model, refit.weights):
        expected = model(**batch).logits
    assert torch.allclose(pruned(**batch).logits, expected, atol=1e-4)


def test_reselect_keeps_per_layer_counts_and_beats_refit_on_the_first_block():
    model = tiny_model("bert", layers=3, hidden=32, heads=4, intermediate=64)
    g = torch.Generator().manual_seed(5)
    masks = Masks((torch.rand(3, 4, generator=g) > 0.5).float(), (torch.rand(3, 64, generator=g) > 0.6).float())
    masks.head[:, 0] = 1  # every layer keeps a head
    batches = _batches(n=4, labels=False)
    refit, refit_reports = tune_masks(model, masks, None, batches, progress=False, mode="refit")
    chosen, reports = tune_masks(model, masks, None, batches, progress=False, mode="reselect")
    assert chosen.heads_per_layer() == masks.heads_per_layer()
    assert chosen.neurons_per_layer() == masks.neurons_per_layer()
    assert not chosen.equal(masks), "the least-squares choice should move some units"
    assert reports[0].error_after <= refit_reports[0].error_after + 1e-9  # same inputs, a choice at least as good
    measured = _measured_block_errors(
        model, chosen, Masks.ones(adapter_for(model).dims(model.config)), batches, cls_only=False
    )
    for r in reports:
        assert r.tuned and r.error_after < r.error_before
        assert measured[(r.layer, r.block)] == pytest.approx(r.error_after, rel=1e-3, abs=1e-6)


def test_reselect_units_finds_the_units_that_carry_the_target():
    from fastprune.common.method.least_squares import LeastSquares, reselect_units

    g = torch.Generator().manual_seed(0)
    act = torch.randn(400, 12, generator=g)
    weight = torch.zeros(3, 12)
    weight[:, [2, 5, 7, 11]] = torch.randn(3, 4, generator=g) * 3  # only units 2, 5, 7 and 11 matter
    (stats,) = LeastSquares.collect([(act, act @ weight.T + 0.5)], 12, 3, "cpu")
    kept = reselect_units(stats, 1, 4, ridge=1e-6)
    assert kept.nonzero().flatten().tolist() == [2, 5, 7, 11]
    weight = torch.zeros(3, 12)
    weight[:, 3:6], weight[:, 9:] = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    (stats,) = LeastSquares.collect([(act, act @ weight.T)], 12, 3, "cpu")
    heads = reselect_units(stats, 3, 2, ridge=1e-6)  # units of 3 columns: (0-2) (3-5) (6-8) (9-11)
    assert heads.tolist() == [False, True, False, True]


def test_reselect_units_keeps_each_groups_count():
    """Query heads sharing key/value groups: the choice keeps each group's count (no group's cost added) and takes
    the units that carry the target within each group."""
    from fastprune.common.method.least_squares import LeastSquares, reselect_units

    g = torch.Generator().manual_seed(1)
    act = torch.randn(400, 6, generator=g)
    weight = torch.zeros(3, 6)
    weight[:, [0, 1, 4]] = torch.tensor([3.0, 2.0, 1.0])  # unit 4 matters least, but is its group's best
    (stats,) = LeastSquares.collect([(act, act @ weight.T)], 6, 3, "cpu")
    assert reselect_units(stats, 1, 2, ridge=1e-6).tolist() == [True, True, False, False, False, False]
    grouped = reselect_units(stats, 1, 2, ridge=1e-6, group_keep=torch.tensor([1, 1]))  # groups (0-2) (3-5)
    assert grouped.tolist() == [True, False, False, False, True, False]


def test_cross_validated_ridge_damps_noise_and_not_signal():
    """Few noisy rows for many columns: cross-validation picks a strong ridge; many clean rows: a weak one."""
    from fastprune.common.method.least_squares import RIDGE_GRID, LeastSquares, cross_validated_ridge

    g = torch.Generator().manual_seed(0)
    proj = torch.nn.Linear(40, 4)
    weight = torch.randn(4, 40, generator=g)

    def folds(rows: int, noise: float) -> list:
        batches = []
        for _ in range(6):
            act = torch.randn(rows, 40, generator=g)
            batches.append((act, act @ weight.T + noise * torch.randn(rows, 4, generator=g)))
        return LeastSquares.collect(batches, 40, 4, "cpu", folds=2)

    keep_all = torch.ones(40)
    with torch.no_grad():
        assert cross_validated_ridge(folds(8, 3.0), proj, keep_all, 1) > RIDGE_GRID[1]
        assert cross_validated_ridge(folds(400, 0.01), proj, keep_all, 1) == RIDGE_GRID[0]


def test_refit_with_a_cross_validated_ridge_lowers_every_block_error():
    model = tiny_model("bert")
    masks = Masks((torch.arange(4) < 2).float().repeat(3, 1), (torch.arange(64) < 16).float().repeat(3, 1))
    batches = _batches(n=4, labels=False)
    tuned, reports = tune_masks(model, masks, None, batches, progress=False, mode="refit", ridge="auto")
    assert all(r.tuned and r.error_after < r.error_before and r.note.startswith("ridge ") for r in reports)
    fixed, _ = tune_masks(model, masks, None, batches, progress=False, mode="refit", ridge=1e-2)
    assert tuned.weights.keys() == fixed.weights.keys()
    with pytest.raises(ValueError, match="auto"):
        tune_masks(model, masks, None, batches, progress=False, mode="scales", ridge="auto")


def test_tuning_stop_policy_keeps_untuned_scales_after_the_stop():
    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    masks = Masks((torch.arange(4) < 2).float().repeat(3, 1), (torch.arange(64) < 8).float().repeat(3, 1))
    tuned, reports = tune_masks(
        model, masks, Masks.ones(dims), _batches(n=2, labels=False), scale_bound=1.0001, policy="stop", progress=False
    )
    stopped = [i for i, r in enumerate(reports) if not r.tuned]
    assert stopped, "a bound this tight should trip the safety stop"
    assert all(not r.tuned for r in reports[stopped[0] :])
    for r in reports[stopped[0] :]:
        row = (tuned.head if r.block == "attention" else tuned.neuron)[r.layer]
        ref = (masks.head if r.block == "attention" else masks.neuron)[r.layer]
        assert torch.equal(row, ref)


def test_iterative_fisher_is_nested_and_within_budget():
    from fastprune.common.method.iterative import iterative_fisher, schedule

    assert schedule(0.25, 2) == pytest.approx([0.5, 0.25])
    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    batches = _batches(n=2)
    calls = []

    def search(grads, constraint):
        calls.append(constraint)
        return search_flops(grads.head_importance(), grads.neuron_importance(), dims, 10.0, constraint)

    grads = iterative_fisher(model, batches, 0.3, 3, search, progress=False)
    assert calls == pytest.approx(schedule(0.3, 3)[:2])
    assert grads.available is not None and flops_ratio(grads.available, dims, 10.0) <= calls[-1] + 1e-9
    # the last step searches among the available units only, and its gradients were measured with the rest pruned
    final = search(grads, 0.3)
    assert flops_ratio(final, dims, 10.0) <= 0.3 + 1e-9
    assert bool((final.head <= grads.available.head).all()) and bool((final.neuron <= grads.available.neuron).all())
    assert torch.isinf(grads.head_importance()).sum() == (grads.available.head == 0).sum() > 0
    masked = collect_mask_gradients(model, batches, masks=grads.available, progress=False)
    assert torch.allclose(grads.head, masked.head)
    # one step is the one-shot Fisher pass
    one_shot = iterative_fisher(model, batches, 0.3, 1, search, progress=False)
    ref = collect_mask_gradients(model, batches, progress=False)
    assert one_shot.available is None and torch.allclose(one_shot.head, ref.head)


def test_search_treats_minus_inf_as_unavailable():
    dims = ModelDims(num_layers=2, num_heads=2, head_size=4, hidden_size=8, intermediate_size=4)
    head = torch.tensor([[1.0, -torch.inf], [2.0, 3.0]])
    neuron = torch.tensor([[1.0, 1.0, -torch.inf, -torch.inf], [1.0, 1.0, 1.0, 1.0]])
    masks = search_flops(head, neuron, dims, 4.0, 0.99)
    assert masks.head[0, 1] == 0 and masks.neuron[0, 2:].sum() == 0
    assert masks.head.sum() == 3 and masks.neuron.sum() == 6


def test_stage_validation_never_accepts_a_higher_heldout_loss():
    from fastprune.common.method.validation import StageValidator, heldout_loss

    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    batches = _batches(n=2, seed=5)
    g = torch.Generator().manual_seed(0)
    validator = StageValidator(model, batches)
    current = Masks.ones(dims)
    for trial in range(6):
        candidate = Masks((torch.rand(3, 4, generator=g) > 0.5).float(), (torch.rand(3, 64, generator=g) > 0.5).float())
        before_loss = heldout_loss(model, current, batches)
        chosen = validator.choose(f"s{trial}", current, candidate)
        decision = validator.report[f"s{trial}"]
        assert decision["loss_before"] == pytest.approx(before_loss)
        assert heldout_loss(model, chosen, batches) == pytest.approx(min(before_loss, decision["loss_after"]))
        assert (chosen is candidate) == decision["accepted"] == (decision["loss_after"] <= before_loss)
        current = chosen
    assert any(d["accepted"] for d in validator.report.values())
    assert not all(d["accepted"] for d in validator.report.values())


def test_tuning_on_a_spread_subset_of_batches():
    from fastprune.common.method.tuning import spread_batches

    batches = [{"input_ids": torch.zeros(4, i + 1)} for i in range(10)]  # ordered by length
    chosen = spread_batches(batches, 12)
    assert len(chosen) == 3 and chosen[0] is batches[0] and chosen[-1]["input_ids"].shape[1] > 5
    assert spread_batches(batches, None) is batches and spread_batches(batches, 1000) is batches
    model = tiny_model("bert")
    masks = Masks((torch.arange(4) < 3).float().repeat(3, 1), (torch.arange(64) < 40).float().repeat(3, 1))
    _, full = tune_masks(model, masks, None, _batches(n=4, labels=False), progress=False)
    _, part = tune_masks(model, masks, None, _batches(n=4, labels=False), progress=False, num_samples=8)
    assert part[1].error_before < full[1].error_before  # fewer tokens in the normal equations


def test_budget_resplit_rearranges_the_layer_it_re_splits():
    """With ``rearrange``, the re-split keeps its per-layer counts but chooses the layer's units by the block-diagonal
    Fisher of the gradients it measured (a pruned set no costlier than the diagonal choice), not by the diagonal
    alone, which would undo the rearrangement stage."""
    from fastprune.common.method.rearrange import pruned_set_cost
    from fastprune.common.method.resplit import BudgetResplit

    class Recording(BudgetResplit):
        def _split(self, grads, layer, left):
            self.measured = getattr(self, "measured", {}) | {layer: grads}
            return super()._split(grads, layer, left)

    model = tiny_model("bert")
    masks = Masks(torch.ones(3, 4), (torch.arange(64) < 24).float().repeat(3, 1))
    runs = {}
    for rearrange in (False, True):
        resplit = Recording(model, masks, seq_len=10.0, rearrange=rearrange)
        tuned, _ = tune_masks(model, masks, None, _batches(n=3), progress=False, mode="refit", resplit=resplit)
        runs[rearrange] = tuned, resplit.measured[1]
    (plain, grads), (rearranged, same) = runs[False], runs[True]
    assert torch.equal(grads.neuron, same.neuron)  # layer 1 is re-split from the same state in both runs
    kept_plain, kept = plain.neuron[1] != 0, rearranged.neuron[1] != 0
    assert int(kept.sum()) == int(kept_plain.sum()) and not torch.equal(kept, kept_plain)
    rows = grads.neuron[:, 1]
    assert pruned_set_cost(rows, ~kept) < pruned_set_cost(rows, ~kept_plain)


def test_budget_resplit_re_decides_the_layers_above_within_the_budget():
    """Before each layer above the first, the re-split re-chooses that layer and those above from Fisher measured on
    the pruned layers below: the result stays within the initial masks' MACs, the first layer keeps the search's
    units, and a split the search would never make is mended."""
    from fastprune.common.method.resplit import BudgetResplit

    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    batches = _batches(n=3)
    # a lopsided start: layer 0 keeps little, layers 1-2 keep almost everything
    head = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float32)
    neuron = torch.zeros(3, 64)
    neuron[0, :4], neuron[1:, :60] = 1, 1
    masks = Masks(head, neuron)
    resplit = BudgetResplit(model, masks, seq_len=10.0)
    tuned, reports = tune_masks(model, masks, None, batches, progress=False, mode="refit", resplit=resplit)
    assert masked_macs(tuned, dims, 10.0) <= masked_macs(masks, dims, 10.0) * (1 + 1e-9)
    assert torch.equal(tuned.head[0], masks.head[0]) and torch.equal(tuned.neuron[0], masks.neuron[0])
    assert [entry["layer"] for entry in resplit.log] == [1, 2]
    assert not (torch.equal(tuned.head[1:], masks.head[1:]) and torch.equal(tuned.neuron[1:], masks.neuron[1:]))
    assert all(r.tuned for r in reports if r.note != "no units kept")
    # the refit weights were fitted for the re-split units: masked evaluation equals the exported model
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad(), pruning_applied(model, tuned, "cpu"):
        masked = model(**batch).logits
    with torch.no_grad():
        exported = export_pruned(model, tuned)(**batch).logits
    assert torch.allclose(masked, exported, atol=1e-4)
