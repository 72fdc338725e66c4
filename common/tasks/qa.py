"""Extractive question answering (SQuAD v1.1 / v2.0): loading, features, post-processing and scoring."""

from __future__ import annotations

import collections
import hashlib
import json
import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import ConfigError, DataError

COLUMNS = ("id", "question", "context", "answers")
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "context": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)
_CHUNK = 1000
_PUNCTUATION = frozenset(string.punctuation)


# ----------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> Any:
    """Parse a .json file; fall back to JSON lines, which many 'json' exports are."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        try:
            return _parse_jsonl(text, path)
        except DataError:
            raise DataError(f"{path}: malformed JSON ({err})") from err


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: malformed JSON on line {n} ({err})") from err
    return rows


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"SQuAD file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:
            raise DataError(f"{path}: unreadable parquet file ({err})") from err
    if suffix == ".jsonl":
        return _parse_jsonl(path.read_text(encoding="utf-8"), path)
    if suffix == ".json":
        return _read_json(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")


def _flatten_official(data: dict, where: str) -> list[dict]:
    """Rows from the official nested format (data -> paragraphs -> qas); `is_impossible` gets no answers."""
    rows = []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    rows.append(
                        {
                            "id": qa["id"],
                            "question": qa["question"],
                            "context": paragraph["context"],
                            "answers": {
                                "text": [a["text"] for a in answers],
                                "answer_start": [a["answer_start"] for a in answers],
                            },
                        }
                    )
    except (KeyError, TypeError) as err:
        raise DataError(f"{where}: malformed SQuAD json (expected data -> paragraphs -> qas; bad key {err})") from err
    return rows


def _as_rows(raw: Any, where: str) -> list[dict]:
    if isinstance(raw, dict) and "data" in raw:
        if raw["data"] and isinstance(raw["data"][0], dict) and "paragraphs" in raw["data"][0]:
            return _flatten_official(raw, where)
        raw = raw["data"]
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        kind = type(raw).__name__
        raise DataError(f"{where}: expected the official SQuAD json or a list of rows, got {kind}")
    return raw


def _check_row(row: dict, n: int, where: str) -> dict:
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise DataError(f"{where}: row {n} lacks column(s) {missing}; found {sorted(row)}; need {list(COLUMNS)}")
    answers = row["answers"]
    if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
        raise DataError(f"{where}: row {n} answers must be {{'text': [...], 'answer_start': [...]}}, got {answers!r}")
    texts, starts = list(answers["text"]), [int(s) for s in answers["answer_start"]]
    if len(texts) != len(starts):
        raise DataError(f"{where}: row {n} (id {row['id']}) has {len(texts)} answer texts but {len(starts)} starts")
    context = str(row["context"])
    for text, start in zip(texts, starts, strict=True):
        if context[start : start + len(text)] != text:
            raise DataError(
                f"{where}: row {n} (id {row['id']}) answer {text!r} is not at answer_start {start} of the "
                f"context (found {context[start : start + len(text)]!r})"
            )
    return {
        "id": str(row["id"]),
        "question": str(row["question"]),
        "context": context,
        "answers": {"text": texts, "answer_start": starts},
    }


def load_squad(source: str | Path | list[dict], version_2: bool = False) -> datasets.Dataset:
    """Load SQuAD from the official nested json, a flat .json/.jsonl/.parquet, or a list of row dicts."""
    where = "SQuAD rows" if isinstance(source, list) else str(source)
    raw = source if isinstance(source, list) else _read_file(Path(source))
    rows = [_check_row(r, n, where) for n, r in enumerate(_as_rows(raw, where))]
    if not rows:
        raise DataError(f"{where}: no questions found")
    ids = collections.Counter(r["id"] for r in rows)
    duplicates = [i for i, c in ids.items() if c > 1]
    if duplicates:
        raise DataError(f"{where}: duplicate question ids, e.g. {duplicates[:3]}")
    unanswerable = sum(not r["answers"]["text"] for r in rows)
    if unanswerable and not version_2:
        raise DataError(
            f"{where}: {unanswerable} of {len(rows)} questions have no answer (SQuAD v2 style); use task squad_v2"
        )
    return datasets.Dataset.from_list(rows, features=FEATURES)


# ---------------------------------------------------------------------------------------------- features
def _check_setup(ds: datasets.Dataset, tokenizer: Any, max_length: int, doc_stride: int) -> None:
    """Fail early (with a clear message) where the Rust tokenizer would panic."""
    if not getattr(tokenizer, "is_fast", False):
        kind = type(tokenizer).__name__
        raise ConfigError(f"question answering needs a fast tokenizer (offset mapping); got {kind}")
    if len(ds) == 0:
        raise DataError("no questions to tokenize (empty dataset)")
    if not 0 <= doc_stride < max_length:
        raise ConfigError(f"doc_stride must be in [0, max_length={max_length}), got {doc_stride}")
    questions = [q.lstrip() for q in ds["question"]]
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = int(np.argmax(lengths))
    room = max_length - lengths[longest] - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= doc_stride:
        raise ConfigError(
            f"question {ds[longest]['id']} has {lengths[longest]} tokens, leaving {room} context tokens "
            f"at max_length={max_length}; need more than doc_stride={doc_stride}"
        )


def _chunks(ds: datasets.Dataset) -> Iterator[dict[str, list]]:
    for first in range(0, len(ds), _CHUNK):
        yield ds[first : first + _CHUNK]


def _tokenize(batch: dict[str, list], tokenizer: Any, max_length: int, doc_stride: int) -> Any:
    return tokenizer(
        [q.lstrip() for q in batch["question"]],
        batch["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _inputs(enc: Any, i: int) -> dict[str, list[int]]:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return {k: list(enc[k][i]) for k in keys}


def _answer_positions(answers: dict, offsets: Sequence, seq_ids: Sequence) -> tuple[int, int]:
    """Token positions of the first gold answer, or (0, 0) when it is absent or not fully inside the span."""
    if not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    ctx = [k for k, s in enumerate(seq_ids) if s == 1]
    if offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return 0, 0
    start = next(k for k in reversed(ctx) if offsets[k][0] <= start_char)
    end = next(k for k in ctx if offsets[k][1] >= end_char)
    return start, end


def prepare_train_features(
    ds: datasets.Dataset, tokenizer: Any, max_length: int = 384, doc_stride: int = 128
) -> list[dict]:
    """One unpadded feature per window: model inputs plus start/end positions (0 = CLS = no answer)."""
    _check_setup(ds, tokenizer, max_length, doc_stride)
    features = []
    for batch in _chunks(ds):
        enc = _tokenize(batch, tokenizer, max_length, doc_stride)
        for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
            answers = batch["answers"][sample]
            start, end = _answer_positions(answers, enc["offset_mapping"][i], enc.sequence_ids(i))
            features.append({**_inputs(enc, i), "start_positions": start, "end_positions": end})
    return features


def prepare_eval_features(
    ds: datasets.Dataset, tokenizer: Any, max_length: int = 384, doc_stride: int = 128
) -> tuple[list[dict], list[dict]]:
    """Unpadded model inputs per window, and meta (example_id, context-only offset_mapping) per window."""
    _check_setup(ds, tokenizer, max_length, doc_stride)
    features, meta = [], []
    for batch in _chunks(ds):
        enc = _tokenize(batch, tokenizer, max_length, doc_stride)
        for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
            pairs = zip(enc["offset_mapping"][i], enc.sequence_ids(i), strict=True)
            offsets = [tuple(o) if s == 1 else None for o, s in pairs]
            features.append(_inputs(enc, i))
            meta.append({"example_id": batch["id"][sample], "offset_mapping": offsets})
    return features, meta


class _FeatureCache:
    """The last few datasets' evaluation features, so that evaluating many pruned models of one model on one dev
    set (a sweep, the benchmark suite) tokenizes it once. Keyed by the dataset's fingerprint and the tokenizer's
    full serialisation (a pruned model's tokenizer loaded from its folder is the same tokenizer)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._entries: collections.OrderedDict[tuple, tuple[list[dict], list[dict]]] = collections.OrderedDict()

    @staticmethod
    def _tokenizer_key(tokenizer: Any) -> str:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow tokenizer: only the same object is known to tokenize alike
            return f"object-{id(tokenizer)}"
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None), spec.pop("padding", None)  # the last call's settings, not the tokenizer's
        settings = (spec, getattr(tokenizer, "padding_side", None), tokenizer.model_input_names)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, ds: datasets.Dataset, tokenizer: Any, max_length: int, doc_stride: int):
        key = (ds._fingerprint, self._tokenizer_key(tokenizer), max_length, doc_stride)
        if key not in self._entries:
            self._entries[key] = prepare_eval_features(ds, tokenizer, max_length, doc_stride)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return self._entries[key]


_eval_features = _FeatureCache()


# ------------------------------------------------------------------------------------------ post-process
def _best_span(
    start: np.ndarray, end: np.ndarray, offsets: list, n_best: int, max_answer_length: int
) -> tuple[float, int, int] | None:
    """Highest start+end score over valid context spans of one feature: (score, char_start, char_end). Among the
    ``n_best`` best starts and ends; ties go to the better start, then the better end."""
    n = len(offsets)
    starts = np.argsort(start[:n])[::-1][:n_best]
    ends = np.argsort(end[:n])[::-1][:n_best]
    in_context = np.array([o is not None for o in offsets], dtype=bool)
    length = ends[None, :] - starts[:, None] + 1
    valid = in_context[starts][:, None] & in_context[ends][None, :] & (length >= 1) & (length <= max_answer_length)
    if not valid.any():
        return None
    scores = np.where(valid, start[starts][:, None] + end[ends][None, :], -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[i, j]), offsets[starts[i]][0], offsets[ends[j]][1]


def best_answers(
    ds: datasets.Dataset,
    meta: list[dict],
    start_logits: Sequence,
    end_logits: Sequence,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
) -> dict[str, dict | None]:
    """The best span of each example over all its features: ``{"answer", "start", "end", "score"}`` (character
    offsets into its context, start+end logit score), or None when no span is valid or the null score wins (v2)."""
    if not len(meta) == len(start_logits) == len(end_logits):
        raise ValueError(f"{len(meta)} features but {len(start_logits)}/{len(end_logits)} start/end logit rows")
    by_example: dict[str, list[int]] = collections.defaultdict(list)
    for i, m in enumerate(meta):
        by_example[m["example_id"]].append(i)
    answers: dict[str, dict | None] = {}
    for example_id, context in zip(ds["id"], ds["context"], strict=True):
        best, null = None, None
        for i in by_example.get(example_id, []):
            start = np.asarray(start_logits[i], dtype=np.float64)
            end = np.asarray(end_logits[i], dtype=np.float64)
            null = min(null, start[0] + end[0]) if null is not None else start[0] + end[0]
            span = _best_span(start, end, meta[i]["offset_mapping"], n_best, max_answer_length)
            if span is not None and (best is None or span[0] > best[0]):
                best = span
        null_wins = version_2 and null is not None and (best is None or null > best[0])
        answers[example_id] = (
            None
            if best is None or null_wins
            else {"answer": context[best[1] : best[2]], "start": best[1], "end": best[2], "score": best[0]}
        )
    return answers


def postprocess_predictions(
    ds: datasets.Dataset,
    meta: list[dict],
    start_logits: Sequence,
    end_logits: Sequence,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
) -> dict[str, str]:
    """Answer text per example id: best span over all its features ("" when the null score wins in v2)."""
    spans = best_answers(ds, meta, start_logits, end_logits, n_best, max_answer_length, version_2)
    return {example_id: span["answer"] if span else "" for example_id, span in spans.items()}


# --------------------------------------------------------------------------------------------- scoring
def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _score(prediction: str | None, answers: list[str]) -> tuple[float, float]:
    """(exact, f1) against the best gold; unanswerable golds count as ""; a missing prediction scores 0."""
    if prediction is None:
        return 0.0, 0.0
    golds = [a for a in answers if normalize_answer(a)] or [""]
    exact = max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
    return exact, max(_f1(prediction, g) for g in golds)


def squad_scores(predictions: dict[str, str], ds: datasets.Dataset, version_2: bool = False) -> dict[str, float]:
    """Exact match and F1 in percent, max over gold answers; missing predictions score 0."""
    exact, f1, has_answer = [], [], []
    for example_id, answers in zip(ds["id"], ds["answers"], strict=True):
        em, f = _score(predictions.get(example_id), answers["text"])
        exact.append(em)
        f1.append(f)
        has_answer.append(bool(answers["text"]))
    if not exact:
        raise DataError("cannot score an empty dataset")
    scores = {"exact_match": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}
    if version_2:
        for name, keep in (("has_ans", True), ("no_ans", False)):
            idx = [i for i, h in enumerate(has_answer) if h == keep]
            if idx:
                scores[f"{name}_exact"] = 100 * float(np.mean([exact[i] for i in idx]))
                scores[f"{name}_f1"] = 100 * float(np.mean([f1[i] for i in idx]))
    return scores


# ------------------------------------------------------------------------------------------- evaluation
def _unpad(rows: torch.Tensor, lengths: list[int], left: bool) -> list[np.ndarray]:
    rows_np = rows.float().cpu().numpy()
    return [r[len(r) - n :] if left else r[:n] for r, n in zip(rows_np, lengths, strict=True)]


def qa_logits(
    model: torch.nn.Module,
    tokenizer: Any,
    features: list[dict],
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[list, list]:
    """Unpadded start and end logits of each feature (dynamic padding, inference mode)."""
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    left = getattr(tokenizer, "padding_side", "right") == "left"
    was_training = model.training
    model.eval()
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for first in tqdm(range(0, len(features), batch_size), disable=not progress, desc="qa eval"):
                chunk = features[first : first + batch_size]
                batch = tokenizer.pad(chunk, return_tensors="pt").to(device)
                out = model(**batch)
                lengths = [len(f["input_ids"]) for f in chunk]
                starts += _unpad(out.start_logits, lengths, left)
                ends += _unpad(out.end_logits, lengths, left)
    finally:
        model.train(was_training)
    return starts, ends


def evaluate_qa(
    model: torch.nn.Module,
    tokenizer: Any,
    ds: datasets.Dataset,
    batch_size: int = 32,
    max_length: int = 384,
    doc_stride: int = 128,
    device: torch.device | str | None = None,
    version_2: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """SQuAD exact match / F1 of a QA model on `ds`."""
    features, meta = _eval_features.get(ds, tokenizer, max_length, doc_stride)
    starts, ends = qa_logits(model, tokenizer, features, batch_size, device, progress)
    predictions = postprocess_predictions(ds, meta, starts, ends, version_2=version_2)
    return squad_scores(predictions, ds, version_2=version_2)


def answer_questions(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int = 384,
    doc_stride: int = 128,
    version_2: bool = False,
    batch_size: int = 32,
) -> list[dict | None]:
    """The best answer span of each (question, context) pair, as :func:`best_answers` gives it."""
    ids = [str(i) for i in range(len(questions))]
    empty: dict[str, list] = {"text": [], "answer_start": []}
    ds = datasets.Dataset.from_dict(
        {"id": ids, "question": list(questions), "context": list(contexts), "answers": [empty] * len(ids)},
        features=FEATURES,
    )
    features, meta = prepare_eval_features(ds, tokenizer, max_length, doc_stride)
    starts, ends = qa_logits(model, tokenizer, features, batch_size)
    spans = best_answers(ds, meta, starts, ends, version_2=version_2)
    return [spans[i] for i in ids]
