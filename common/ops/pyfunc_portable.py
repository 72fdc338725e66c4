"""The MLflow model of a model pruned by fastprune: predicts from raw text, and runs without fastprune.

fastprune logs this file as the model's code (an MLflow "model from code": nothing pickled) with the exported model
folder as its one artifact, and pins only what it imports: mlflow (with its pandas and numpy), torch, transformers,
tokenizers and safetensors. So ``mlflow models serve -m models:/NAME/VERSION`` serves it from any environment that
has those, and ``mlflow.pyfunc.load_model(...).predict(frame)`` answers:

- a sequence classifier, from ``text`` (and optionally ``text_pair``): ``label`` (the name in the model's
  ``id2label``), ``score`` (its probability) and ``probabilities`` (one per label, in id order);
- a regressor (STS-B): ``score``;
- an extractive question-answering model, from ``question`` and ``context``: ``answer``, its ``start`` and ``end``
  (character offsets in the context; -1 when there is none) and ``score`` (start plus end logit);
- a causal language model, from ``prompt``: ``text``, its greedy continuation (``max_new_tokens`` tokens at most);
- a sentence-embedding model (a sentence-transformers folder), from ``text``: ``embedding`` (a list of floats), pooled
  as its ``1_Pooling/config.json`` says (mean, CLS or max) and L2-normalised when ``modules.json`` lists Normalize.

The model folder is checked against its ``MANIFEST.json`` (sha256 of every file) before it loads.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

MODELING_FILE = "modeling_fastprune.py"  # the folder's own modeling code, when no stock config describes it
MANIFEST = "MANIFEST.json"
QA_COLUMNS = ["answer", "start", "end", "score"]
# Text columns are plain Python objects: pandas 3's string dtype is unknown to MLServer's V2 encoder (1.7.1).


def check_manifest(folder: Path) -> None:
    """Every file listed in the folder's manifest has its size and sha256 (a folder without one is not checked)."""
    path = folder / MANIFEST
    if not path.is_file():
        return
    for rel, entry in json.loads(path.read_text())["files"].items():
        file = folder / rel
        if not file.is_file() or file.stat().st_size != entry["size"]:
            raise MlflowException(f"{file} is missing or has another size than {MANIFEST} says")
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise MlflowException(f"{file} does not match its sha256 in {MANIFEST}")


_MODEL_CLASSES = {"qa": AutoModelForQuestionAnswering, "causal-lm": AutoModelForCausalLM, "embedding": AutoModel}


def load_folder(folder: str | Path, kind: str):
    """The model (eval mode) and tokenizer of an exported folder of a task ``kind`` (``qa``, ``causal-lm``,
    ``embedding``, else a sequence classifier), with transformers alone."""
    folder = Path(folder)
    own_code = (folder / MODELING_FILE).is_file()  # shipped in the folder with the model, not fetched
    cls = _MODEL_CLASSES.get(kind, AutoModelForSequenceClassification)
    model = cls.from_pretrained(folder, trust_remote_code=own_code).eval()
    return model, AutoTokenizer.from_pretrained(folder, config=model.config)


def _bad_input(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)  # a 400 answer from the scoring server


def classify(model, tokenizer, frame: pd.DataFrame, kind: str, max_length: int, batch_size: int = 64) -> pd.DataFrame:
    """``label``, ``score`` and ``probabilities`` per row (``score`` alone for a regressor)."""
    if "text" not in frame.columns:
        raise _bad_input(f"the input needs a 'text' column (and optionally 'text_pair'); got {list(frame.columns)}")
    texts = frame["text"].astype(str).tolist()
    pairs = frame["text_pair"].fillna("").astype(str).tolist() if "text_pair" in frame.columns else None
    pairs = pairs if pairs and any(pairs) else None
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            encoded = tokenizer(
                texts[i : i + batch_size],
                pairs[i : i + batch_size] if pairs else None,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            chunks.append(model(**encoded).logits.float())
    logits = torch.cat(chunks) if chunks else torch.zeros(0, model.config.num_labels)
    if kind == "regression":
        return pd.DataFrame({"score": logits[:, 0].double().numpy()})
    probabilities = logits.softmax(-1).double()
    names = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    labels = pd.Series([names.get(int(i), str(int(i))) for i in probabilities.argmax(-1)], dtype=object)
    return pd.DataFrame(
        {
            "label": labels,
            "score": probabilities.max(-1).values.numpy(),
            "probabilities": probabilities.numpy().tolist(),
        }
    )


def embed(model, tokenizer, folder: Path, frame: pd.DataFrame, max_length: int, batch_size: int = 64) -> pd.DataFrame:
    """``embedding`` per row of ``text``: the sentence-transformers folder's pooling of the last hidden states."""
    if "text" not in frame.columns:
        raise _bad_input(f"an embedding model needs a 'text' column; got {list(frame.columns)}")
    modules = json.loads((folder / "modules.json").read_text())
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    pooling = json.loads((folder / kinds["Pooling"] / "config.json").read_text())
    st_config = folder / "sentence_bert_config.json"  # its max_seq_length, as sentence-transformers truncates
    if st_config.is_file():
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length") or max_length)
    texts = frame["text"].astype(str).tolist()
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            encoded = tokenizer(
                texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            hidden = model(**encoded).last_hidden_state.float()
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            if pooling.get("pooling_mode_cls_token"):
                out = hidden[:, 0]
            elif pooling.get("pooling_mode_max_tokens"):
                out = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:
                out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(out, dim=-1) if "Normalize" in kinds else out)
    embeddings = torch.cat(chunks) if chunks else torch.zeros(0, model.config.hidden_size)
    return pd.DataFrame({"embedding": embeddings.double().numpy().tolist()})


def _best_span(start: np.ndarray, end: np.ndarray, offsets: list, n_best: int, max_answer: int):
    """(score, first character, end character) of the best valid context span of one window, or None."""
    starts = np.argsort(start)[::-1][:n_best]
    ends = np.argsort(end)[::-1][:n_best]
    in_context = np.array([o is not None for o in offsets], dtype=bool)
    length = ends[None, :] - starts[:, None] + 1
    valid = in_context[starts][:, None] & in_context[ends][None, :] & (length >= 1) & (length <= max_answer)
    if not valid.any():
        return None
    scores = np.where(valid, start[starts][:, None] + end[ends][None, :], -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[i, j]), offsets[starts[i]][0], offsets[ends[j]][1]


def answer(
    model,
    tokenizer,
    frame: pd.DataFrame,
    max_length: int,
    doc_stride: int = 128,
    version_2: bool = False,
    batch_size: int = 32,
    n_best: int = 20,
    max_answer: int = 30,
) -> pd.DataFrame:
    """The best answer span of each (question, context) row over its windows of ``max_length`` tokens."""
    missing = [c for c in ("question", "context") if c not in frame.columns]
    if missing:
        raise _bad_input(
            f"a question-answering model needs 'question' and 'context' columns; missing {missing}, "
            f"got {list(frame.columns)}"
        )
    if frame.empty:
        return pd.DataFrame({c: [] for c in QA_COLUMNS})
    questions = [q.lstrip() for q in frame["question"].astype(str)]
    contexts = frame["context"].astype(str).tolist()
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    if max_length - longest - tokenizer.num_special_tokens_to_add(pair=True) <= doc_stride:
        raise _bad_input(
            f"a question of {longest} tokens leaves too little room for the context in {max_length} tokens: shorten it"
        )
    enc = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: list(enc[k][i]) for k in keys} for i in range(len(enc["input_ids"]))]
    left = getattr(tokenizer, "padding_side", "right") == "left"
    windows = collections.defaultdict(list)  # row -> (start logits, end logits, context offsets) of its windows
    with torch.inference_mode():
        for first in range(0, len(features), batch_size):
            chunk = features[first : first + batch_size]
            out = model(**tokenizer.pad(chunk, return_tensors="pt"))
            for k, feature in enumerate(chunk):
                i, n = first + k, len(feature["input_ids"])
                real = slice(out.start_logits.shape[1] - n, None) if left else slice(0, n)  # the unpadded tokens
                offsets = [
                    tuple(o) if s == 1 else None
                    for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i), strict=True)
                ]
                windows[enc["overflow_to_sample_mapping"][i]].append(
                    (out.start_logits[k, real].double().numpy(), out.end_logits[k, real].double().numpy(), offsets)
                )
    rows = []
    for row, context in enumerate(contexts):
        best, null = None, None
        for start, end, offsets in windows[row]:
            null = start[0] + end[0] if null is None else min(null, start[0] + end[0])
            span = _best_span(start, end, offsets, n_best, max_answer)
            if span is not None and (best is None or span[0] > best[0]):
                best = span
        if best is None or (version_2 and null is not None and null > best[0]):
            rows.append({"answer": "", "start": -1, "end": -1, "score": float("nan")})
        else:
            rows.append({"answer": context[best[1] : best[2]], "start": best[1], "end": best[2], "score": best[0]})
    return pd.DataFrame(rows, columns=QA_COLUMNS).astype({"answer": object})


def generate(model, tokenizer, frame: pd.DataFrame, max_new_tokens: int) -> pd.DataFrame:
    """``text``: the greedy continuation of each ``prompt``, one prompt at a time (no padding to get wrong)."""
    if "prompt" not in frame.columns:
        raise _bad_input(f"the input needs a 'prompt' column; got {list(frame.columns)}")
    texts = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for prompt in frame["prompt"].astype(str):
            encoded = tokenizer(prompt, return_tensors="pt")
            ids = {k: encoded[k] for k in ("input_ids", "attention_mask")}  # no token_type_ids
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return pd.DataFrame({"text": pd.Series(texts, dtype=object)})


class PortableTextModel(PythonModel):
    """The pyfunc: the exported folder (artifact ``model``) loaded with transformers; the task in ``model_config``
    (``kind``: classification, regression, qa, causal-lm or embedding; ``max_length``; ``version_2`` for SQuAD v2;
    ``max_new_tokens`` for a causal LM)."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts["model"])
        check_manifest(folder)
        self.settings = dict(context.model_config or {})
        self.folder = folder
        self.model, self.tokenizer = load_folder(folder, str(self.settings.get("kind", "classification")))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        kind, max_length = self.settings.get("kind", "classification"), int(self.settings.get("max_length", 128))
        if kind == "causal-lm":
            return generate(self.model, self.tokenizer, frame, int(self.settings.get("max_new_tokens", 32)))
        if kind == "qa":
            return answer(
                self.model, self.tokenizer, frame, max_length, version_2=bool(self.settings.get("version_2", False))
            )
        if kind == "embedding":
            return embed(self.model, self.tokenizer, self.folder, frame, max_length)
        return classify(self.model, self.tokenizer, frame, kind, max_length)
