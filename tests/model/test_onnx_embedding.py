"""ONNX folder of a pruned sentence-embedding model (issue 18): onnxruntime alone gives fastprune's embeddings
(``sentence_embedding``, pooled and normalised in the graph), the token embeddings (``last_hidden_state``) pooled by
sentence-transformers' own Pooling and Normalize modules with the folder's ``1_Pooling`` config give them too (what
its ONNX backend does), and the evaluate step's onnxruntime model embeds the same through fastprune's task."""

import json

import numpy as np
import pytest
import torch
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned, save_pruned
from fastprune.common.model.loading import load_model
from fastprune.common.model.masks import Masks
from fastprune.common.model.onnx_folder import ONNX_FILE, OrtModel, build_onnx_folder
from fastprune.common.tasks.spec import get_task
from fastprune.common.tasks.st_folder import read_st_folder
from tiny import tiny_st_folder
from transformers import AutoTokenizer

TASK = get_task("embedding")
TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Three dogs run.", "a fine movie"]


@pytest.mark.parametrize(("mode", "family"), [("mean", "bert"), ("max", "mpnet")])
def test_the_onnx_folder_of_a_pruned_embedding_model_embeds_as_fastprune(tmp_path, mode, family):
    import onnxruntime as ort
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    normalize = mode != "max"
    model, tokenizer = load_model(tiny_st_folder(tmp_path / "st", mode=mode, normalize=normalize, family=family), TASK)
    masks = Masks.ones(adapter_for(model).dims(model.config))
    masks.head[0, 1] = 0  # another head count in the first layer: the portable, per-layer structure
    masks.neuron[1, ::2] = 0
    pruned = save_pruned(export_pruned(model, masks, neuron_multiple=1), tmp_path / "pruned", tokenizer)
    meta = build_onnx_folder(pruned, tmp_path / "onnx")
    assert meta["outputs"] == ["last_hidden_state", "sentence_embedding"] and meta["max_abs_diff_vs_torch"] < 1e-4
    assert meta["pooling"] == {"mode": mode, "normalize": normalize}
    onnx = tmp_path / "onnx"
    carried = read_st_folder(onnx)  # a sentence-transformers folder with the pruned model's pooling
    assert (carried.mode, carried.normalize) == (mode, normalize)

    torch_model, torch_tokenizer = load_model(pruned, TASK)
    expected = TASK.embed_texts(torch_model, torch_tokenizer, TEXTS, "cpu").numpy()
    session = ort.InferenceSession(str(onnx / ONNX_FILE), providers=["CPUExecutionProvider"])
    enc = AutoTokenizer.from_pretrained(onnx)(TEXTS, padding=True, return_tensors="np")
    feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    tokens, sentence = session.run(["last_hidden_state", "sentence_embedding"], feed)
    np.testing.assert_allclose(sentence, expected, atol=1e-5)
    features = {"token_embeddings": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(enc["attention_mask"])}
    pooled = Pooling.load(str(onnx / "1_Pooling"))(features)
    if any(m["type"].endswith("Normalize") for m in json.loads((onnx / "modules.json").read_text())):
        pooled = Normalize()(pooled)
    np.testing.assert_allclose(pooled["sentence_embedding"].numpy(), expected, atol=1e-5)
    ours = TASK.embed_texts(OrtModel(onnx), torch_tokenizer, TEXTS, "cpu")  # what the evaluate step measures
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)
