"""Tiny in-process models and tokenizers for the tests (no hub, no downloads)."""

from __future__ import annotations

import collections
import csv
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizer,
    CamembertConfig,
    DistilBertConfig,
    ElectraConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SST2 = REPO / "fastprune" / "data" / "sst2"


def tiny_vocab(size: int = 3000) -> dict[str, int]:
    """A WordPiece vocabulary of the most frequent words of the bundled SST-2 subset and the test data."""
    counts: collections.Counter[str] = collections.Counter()
    with open(SST2 / "train.tsv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            counts.update(re.findall(r"\w+|[^\w\s]", row[0].lower()))
    for path in DATA.glob("*"):
        counts.update(re.findall(r"\w+|[^\w\s]", path.read_text(encoding="utf-8").lower()))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["##" + c for c in letters]
    words = [w for w, _ in counts.most_common(size)]
    vocab = list(dict.fromkeys(specials + letters + pieces + words))
    return {tok: i for i, tok in enumerate(vocab)}


_VOCAB: dict[str, int] | None = None


def tiny_tokenizer() -> BertTokenizer:
    global _VOCAB
    if _VOCAB is None:
        _VOCAB = tiny_vocab()
    return BertTokenizer(vocab=dict(_VOCAB), do_lower_case=True)


def tiny_config(
    family: str = "bert",
    vocab_size: int = 3100,
    layers: int = 3,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    num_labels: int = 2,
):
    common = dict(vocab_size=vocab_size, max_position_embeddings=512, num_labels=num_labels)
    if family == "bert":
        return BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            **common,
        )
    if family in ("roberta", "xlm-roberta", "camembert"):
        config_class = {"roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig, "camembert": CamembertConfig}
        return config_class[family](
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            **{**common, "max_position_embeddings": 520},
        )
    if family == "electra":
        return ElectraConfig(
            hidden_size=hidden,
            embedding_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            **common,
        )
    if family == "distilbert":
        return DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=intermediate, **common)
    if family == "mpnet":  # a relative position bias shared by all layers (32 buckets, one channel per head)
        return MPNetConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            **{**common, "max_position_embeddings": 520},
        )
    raise ValueError(family)


def tiny_model(family: str = "bert", task: str = "classification", num_labels: int = 2, seed: int = 0, **kw):
    """A randomly initialised tiny model in eval mode (dropout off)."""
    torch.manual_seed(seed)
    kw.setdefault("vocab_size", len(tiny_tokenizer()))
    config = tiny_config(family, num_labels=num_labels, **kw)
    cls = AutoModelForQuestionAnswering if task == "qa" else AutoModelForSequenceClassification
    model = cls.from_config(config)
    if family == "mpnet":
        strong_position_bias(model)
    return model.eval()


def strong_position_bias(model) -> None:
    """Give a tiny MPNet a relative position bias as large as a trained one's (its random init is near zero), so
    that a layer given the wrong heads' channels computes visibly wrong outputs."""
    with torch.no_grad():
        model.base_model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)


def trained_tiny_model(path: Path, steps: int = 150, family: str = "bert") -> Path:
    """A tiny model trained briefly on the bundled SST-2 subset (well above chance), saved to ``path``."""
    from fastprune.common.tasks.data import load_task_data
    from fastprune.common.tasks.finetune import finetune, save_finetuned
    from fastprune.common.tasks.spec import get_task

    task = get_task("sst2")
    tokenizer = tiny_tokenizer()
    model = tiny_model(family, layers=2, hidden=64, intermediate=128)
    train = load_task_data(SST2 / "train.tsv", task)
    finetune(model, tokenizer, task, train, steps=steps, lr=1e-3, progress=False)
    return save_finetuned(model, tokenizer, path)


TEXT = REPO / "fastprune" / "data" / "text"


def tiny_llama_config(
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    groups: int = 2,
    intermediate: int = 48,
    vocab_size: int | None = None,
    attention: str | None = None,
):
    """The config of :func:`tiny_llama` (``vocab_size`` defaults to the tiny tokenizer's; ``attention`` picks the
    attention implementation, e.g. eager or sdpa)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size or len(tiny_tokenizer()),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=hidden // heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    if attention:
        config._attn_implementation = attention
    return config


def tiny_llama(seed: int = 0, **config):
    """A randomly initialised tiny Llama (grouped-query attention, gated MLP, pre-norm, rotary) over the tiny
    tokenizer's vocabulary, in eval mode; ``config``: :func:`tiny_llama_config`'s arguments."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**config)).eval()


def tiny_st_folder(
    path: Path, mode: str = "mean", normalize: bool = True, seed: int = 0, family: str = "bert", **kw
) -> Path:
    """A tiny sentence-transformers folder, written as ``SentenceTransformer.save`` does: the encoder (``BertModel``,
    or the ``family``'s) and tokenizer at the root, ``modules.json``, ``1_Pooling/config.json`` (``mode``: mean, cls,
    max or another sentence-transformers mode), ``sentence_bert_config.json``; ``2_Normalize`` is listed without a
    folder, as in the real all-mpnet-base-v2."""
    import json

    from transformers import AutoModel

    torch.manual_seed(seed)
    kw.setdefault("vocab_size", len(tiny_tokenizer()))
    kw.setdefault("layers", 2)
    config = tiny_config(family, **kw)
    encoder = AutoModel.from_config(config).eval()
    if family == "mpnet":
        strong_position_bias(encoder)
    encoder.save_pretrained(path)
    tokenizer = tiny_tokenizer()
    if family == "mpnet":  # MPNet reads no token types (its own tokenizer makes none)
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(path)
    prefix = "sentence_transformers.models."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": prefix + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": prefix + "Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": prefix + "Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    chosen = {"mean": "mean_tokens", "cls": "cls_token", "max": "max_tokens"}.get(mode, mode)
    pooling = {f"pooling_mode_{m}": m == chosen for m in modes}
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": config.hidden_size, **pooling})
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return path
