"""Task embedding on a tiny sentence-transformers folder built in-process: loading, the label-free Fisher loss,
masked equals sliced, the exported folder (fastprune and SentenceTransformer give the same embeddings), the pyfunc's
embeddings and the bad inputs."""

import json

import pandas as pd
import pytest
import torch
from fastprune.common.errors import DataError, ModelTaskMismatchError
from fastprune.common.method.fisher import collect_mask_gradients
from fastprune.common.method.tuning import DEFAULT_RIDGE, tune_masks
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned, save_pruned
from fastprune.common.model.loading import load_model
from fastprune.common.model.masks import Masks, pruning_applied
from fastprune.common.ops import pyfunc_portable
from fastprune.common.tasks.spec import get_task
from tiny import DATA, tiny_st_folder

TASK = get_task("embedding")
TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Three dogs run.", "a fine movie"]


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    return tiny_st_folder(tmp_path_factory.mktemp("st") / "model")


def _masks(model, seed=0) -> Masks:
    """A non-uniform structure (needs the portable modeling code): one layer loses a head and half its neurons."""
    dims = adapter_for(model).dims(model.config)
    masks = Masks.ones(dims)
    masks.head[0, 1] = 0
    masks.neuron[1, ::2] = 0
    return masks


def test_aliases_and_loading(st_folder):
    assert get_task("sentence-transformers") is TASK and TASK.metric == "spearman_cosine"
    model, tokenizer = load_model(st_folder, TASK)
    assert type(model).__name__ == "BertModel"
    embeddings = TASK.embed_texts(model, tokenizer, TEXTS, "cpu")
    assert embeddings.shape == (4, 32)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)  # Normalize is listed


@pytest.mark.parametrize("objective", ["contrastive", "gaussian"])
@pytest.mark.parametrize("paired", [True, False])
def test_fisher_loss_is_finite_and_nonzero_at_the_dense_model(st_folder, objective, paired):
    import dataclasses

    task = dataclasses.replace(TASK, objective=objective)
    model, tokenizer = load_model(st_folder, task)
    data = task.load_data(DATA / "stsb_train.tsv")
    if not paired:
        data = data.map(lambda r: {"text_b": ""})
    batches = task.batches(data.select(range(24)), tokenizer, batch_size=8)
    assert ("pairs" in batches[0]) == paired and len(batches[0]["input_ids"]) == (16 if paired else 8)
    loss = task.fisher_loss(model, batches[0])
    assert torch.isfinite(loss) and loss > 0
    grads = collect_mask_gradients(model, batches, progress=False, task=task)
    assert grads.head.shape[0] == 48 if paired else 24
    for importance in (grads.head_importance(), grads.neuron_importance()):
        assert torch.isfinite(importance).all() and (importance > 0).all()


def test_masked_equals_sliced_and_the_export_round_trips(st_folder, tmp_path):
    model, tokenizer = load_model(st_folder, TASK)
    masks = _masks(model)
    with pruning_applied(model, masks, "cpu"):
        masked = TASK.embed_texts(model, tokenizer, TEXTS, "cpu")
    out = save_pruned(export_pruned(model, masks, neuron_multiple=1), tmp_path / "out", tokenizer)
    assert json.loads((out / "modules.json").read_text())[-1]["type"].endswith("Normalize")
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    loaded, loaded_tokenizer = load_model(out, TASK)
    assert adapter_for(loaded).structure(loaded)["num_heads"] == [3, 4]
    assert torch.allclose(TASK.embed_texts(loaded, loaded_tokenizer, TEXTS, "cpu"), masked, atol=1e-5)
    # the MLflow model's code (no fastprune) embeds the same
    portable, portable_tokenizer = pyfunc_portable.load_folder(out, "embedding")
    frame = pd.DataFrame({"text": TEXTS})
    served = pyfunc_portable.embed(portable, portable_tokenizer, out, frame, 128)
    assert torch.allclose(torch.tensor(served["embedding"].tolist()).float(), masked, atol=1e-5)
    predicted = TASK.predict(loaded, loaded_tokenizer, frame)  # the registry's PrunedTextModel
    assert torch.allclose(torch.tensor(predicted["embedding"].tolist()).float(), masked, atol=1e-5)


@pytest.mark.parametrize(("mode", "family"), [("mean", "bert"), ("cls", "bert"), ("max", "bert"), ("mean", "mpnet")])
def test_sentence_transformers_loads_the_export_with_the_same_embeddings(tmp_path, mode, family):
    st = pytest.importorskip("sentence_transformers")
    folder = tiny_st_folder(tmp_path / "st", mode=mode, normalize=mode != "max", family=family)
    model, tokenizer = load_model(folder, TASK)
    dense = st.SentenceTransformer(str(folder), device="cpu")  # the dense folder: fastprune pools as it does
    ours = TASK.embed_texts(model, tokenizer, TEXTS, "cpu")
    assert torch.allclose(torch.tensor(dense.encode(TEXTS)), ours, atol=1e-5)
    masks = _masks(model)
    with pruning_applied(model, masks, "cpu"):
        masked = TASK.embed_texts(model, tokenizer, TEXTS, "cpu")
    out = save_pruned(export_pruned(model, masks), tmp_path / "out", tokenizer)
    pruned = st.SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert torch.allclose(torch.tensor(pruned.encode(TEXTS)), masked, atol=1e-5)


def test_the_refits_default_ridge_is_the_embedding_tasks(st_folder):
    """The weak encoder ridge fits the calibration pairs too closely (benchmarks/results/embedding_notes.md)."""
    model, tokenizer = load_model(st_folder, TASK)
    batches = TASK.batches(TASK.load_data(DATA / "stsb_train.tsv").select(range(16)), tokenizer, batch_size=8)
    masks = _masks(model)
    tuned = {
        ridge: tune_masks(model, masks, None, batches, progress=False, mode="refit", ridge=ridge, task=TASK)[0]
        for ridge in (None, TASK.refit_ridge, DEFAULT_RIDGE["refit"])
    }
    assert TASK.refit_ridge != DEFAULT_RIDGE["refit"]
    assert all(torch.equal(tuned[None].weights[k], tuned[TASK.refit_ridge].weights[k]) for k in tuned[None].weights)
    assert not all(
        torch.allclose(tuned[None].weights[k], tuned[DEFAULT_RIDGE["refit"]].weights[k]) for k in tuned[None].weights
    )


@pytest.mark.parametrize("paired", [True, False])
def test_held_out_validation_measures_the_distance_from_the_dense_geometry(st_folder, paired):
    """``--holdout`` on unlabeled sentences: the loss is the KL divergence of the masked model's in-batch similarity
    distributions from the dense model's, zero for the dense masks and growing as more is pruned; a stage that
    prunes more is rejected."""
    from fastprune.common.method.validation import StageValidator, heldout_loss

    model, tokenizer = load_model(st_folder, TASK)
    data = TASK.load_data(DATA / "stsb_train.tsv")
    if not paired:
        data = data.map(lambda r: {"text_b": ""})
    batches = TASK.batches(data.select(range(16)), tokenizer, batch_size=8)
    validator = StageValidator(model, batches, task=TASK)
    dense, light = Masks.ones(adapter_for(model).dims(model.config)), _masks(model)
    heavy = Masks(light.head.clone(), light.neuron.clone())
    heavy.head[:, :2] = 0
    losses = [
        heldout_loss(model, m, batches, task=TASK, references=validator.references) for m in (dense, light, heavy)
    ]
    assert losses[0] == pytest.approx(0.0, abs=1e-6) and 0 < losses[1] < losses[2]
    assert validator.choose("rearrange", light, heavy) is light and not validator.report["rearrange"]["accepted"]
    assert validator.choose("tune", light, dense) is dense
    one = TASK.batches(data.select(range(1)), tokenizer, batch_size=8)[0]  # unpaired: no partner in its batch
    assert float(TASK.validation_loss(model, one, TASK.validation_reference(model, one))) == 0.0


def test_a_sample_too_small_to_hold_out_from_is_used_whole_with_a_warning(tmp_path):
    """``--holdout`` takes its fraction out of the sample; when that rounds to no example, nothing is held out (no
    empty file for the tuning to validate on) and the sample stage says so."""
    from fastprune.common.folders import HOLDOUT_FILE
    from fastprune.common.stages.run import run_stage

    def sample(name: str, num_samples: int) -> dict:
        params = {"train_data": str(DATA / "stsb_train.tsv"), "task": "embedding", "num_samples": num_samples}
        return run_stage("sample", tmp_path / name, {**params, "seed": 0, "holdout": 0.2})

    held = sample("held", 40)
    assert held["holdout"] == 0.2 and held["num_examples"] == 32 and "warnings" not in held
    assert len(pd.read_parquet(tmp_path / "held" / HOLDOUT_FILE)) == 8
    tiny = sample("tiny", 2)
    assert tiny["holdout"] == 0 and tiny["num_examples"] == 2 and not (tmp_path / "tiny" / HOLDOUT_FILE).exists()
    assert any("too small to hold out 0.2" in w for w in tiny["warnings"])


def test_a_folder_that_is_not_a_sentence_transformers_model_is_refused(tmp_path):
    folder = tiny_st_folder(tmp_path / "m")
    (folder / "modules.json").unlink()
    with pytest.raises(ModelTaskMismatchError, match="not a sentence-transformers model folder.*modules.json"):
        load_model(folder, TASK)


def test_an_unsupported_pooling_mode_is_refused_naming_it(tmp_path):
    folder = tiny_st_folder(tmp_path / "m", mode="mean_sqrt_len_tokens")
    with pytest.raises(ModelTaskMismatchError, match=r"pools with mean_sqrt_len_tokens.*one of mean, cls, max"):
        load_model(folder, TASK)


def test_a_pairs_file_without_scores_is_refused_for_evaluation(tmp_path):
    unscored = tmp_path / "pairs.tsv"
    unscored.write_text("sentence1\tsentence2\nA man runs.\tA man is running.\n")
    assert len(TASK.load_data(unscored)) == 1  # calibration needs no score
    with pytest.raises(DataError, match="needs sentence pairs with a gold score"):
        TASK.load_data(unscored, "validation")
    sentences = tmp_path / "s.txt"
    sentences.write_text("A man runs.\n\nA dog barks.\n")
    assert list(TASK.load_data(sentences)["text_a"]) == ["A man runs.", "A dog barks."]
