"""Bad inputs end in one line naming the file or value and what would be valid (exit code 2), never a traceback:
unreadable data files, broken safetensors, pickle-only checkpoints, the wrong stage folder, tampered pruned configs.
Tiny in-process models, real files on disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from fastprune.common.errors import IntegrityError
from fastprune.common.model.arch import STRUCTURE_KEY, adapter_for
from fastprune.common.model.checkpoint import read_header
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks
from oneline import one_line_error
from tiny import tiny_model, tiny_tokenizer

from fastprune.cli import main

GOOD_ROWS = "sentence\tlabel\na fine movie\t1\na dull movie\t0\n"


@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    """main() configures logging on the stream capsys gives it: drop that handler after each test."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)


def _fails_in_one_line(argv: list[str], capsys, *expected: str) -> str:
    """The command exits with 2 and its error is one line (third-party log lines aside), without a traceback."""
    import logging
    import sys

    for handler in logging.getLogger("datasets").handlers:  # bound to an earlier test's captured stream
        if isinstance(handler, logging.StreamHandler):
            handler.stream = sys.stderr
    assert main(argv) == 2
    return one_line_error(capsys, *expected)


def _dense_folder(path: Path) -> Path:
    model = tiny_model("bert", layers=2)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _pruned_folder(path: Path) -> Path:
    model = tiny_model("bert", layers=2)
    dims = adapter_for(model).dims(model.config)
    head = torch.ones(dims.num_layers, dims.num_heads)
    head[0, :2] = 0
    neuron = torch.ones(dims.num_layers, dims.intermediate_size)
    neuron[1, 16:] = 0
    return save_pruned(export_pruned(model, Masks(head, neuron), neuron_multiple=1), path, tiny_tokenizer())


# ----- data files --------------------------------------------------------------------------------------------
def _binary(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def _latin1(path: Path) -> None:
    path.write_bytes("sentence\tlabel\nun film très réussi\t1\n".encode("latin-1"))


def _long_line(path: Path) -> None:
    path.write_text('sentence,label\n"' + "a" * (5 * 1024 * 1024) + '",1\n', encoding="utf-8")


def _corrupt_parquet(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not a parquet file at all")


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("train.tsv", _binary, "is not UTF-8 text"),
        ("train.tsv", _latin1, "is not UTF-8 text"),
        ("train.csv", _long_line, "fields of at most"),
        ("train.jsonl", _latin1, "is not UTF-8 text"),
        ("train.parquet", _corrupt_parquet, "parquet"),
    ],
)
def test_an_unreadable_data_file_is_named_in_one_line(name, write, expected, tmp_path, capsys):
    data = tmp_path / name
    write(data)
    err = _fails_in_one_line(
        [
            "step",
            "sample",
            "--train-data",
            str(data),
            "--task",
            "sst2",
            "--num-samples",
            "4",
            "--out",
            str(tmp_path / "sample"),
        ],
        capsys,
        str(data),
        expected,
    )
    assert "expected a UTF-8 text file" in err or "expected" in err
    assert not (tmp_path / "sample").exists()


def test_an_unreadable_squad_file_is_named_in_one_line(tmp_path, capsys):
    data = tmp_path / "dev.json"
    _latin1(data)
    _fails_in_one_line(
        [
            "step",
            "sample",
            "--train-data",
            str(data),
            "--task",
            "squad",
            "--num-samples",
            "4",
            "--out",
            str(tmp_path / "sample"),
        ],
        capsys,
        str(data),
        "is not UTF-8 text",
    )


# ----- safetensors ---------------------------------------------------------------------------------------------
def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def _huge_header_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_empty, "empty or truncated"),
        (_truncated, "truncated or corrupt"),
        (_corrupt_header, "not JSON"),
        (_huge_header_length, "truncated or corrupt"),
    ],
)
def test_a_broken_safetensors_file_is_named_in_one_line(damage, expected, tmp_path, capsys):
    dense = _dense_folder(tmp_path / "dense")
    damage(dense / "model.safetensors")
    _fails_in_one_line(
        ["step", "prepare", "--model", str(dense), "--task", "sst2", "--out", str(tmp_path / "m")],
        capsys,
        f"{dense / 'model.safetensors'} is not a valid safetensors file",
        expected,
    )

    pruned = _pruned_folder(tmp_path / "pruned")
    damage(pruned / "model.safetensors")
    with pytest.raises(IntegrityError, match=expected):
        load_pruned(pruned)
    _fails_in_one_line(
        ["profile", "--model", str(pruned), "--output", str(tmp_path / "p.json")],
        capsys,
        "is not a valid safetensors file",
    )


def test_the_header_reader_sees_the_shapes(tmp_path):
    pruned = _pruned_folder(tmp_path / "pruned")
    tensors = read_header(pruned / "model.safetensors")
    ffn = [name for name in tensors if name.endswith("layer.1.intermediate.dense.weight")]
    assert len(ffn) == 1 and tensors[ffn[0]].shape == (16, 32) and tensors[ffn[0]].dtype == "F32"


# ----- pickle checkpoints ---------------------------------------------------------------------------------------
def _pickle_only(path: Path) -> Path:
    model = tiny_model("bert", layers=2)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_a_pickle_checkpoint_is_refused_unless_allowed(tmp_path, capsys):
    source = _pickle_only(tmp_path / "pickled")
    _fails_in_one_line(
        ["step", "prepare", "--model", str(source), "--task", "sst2", "--out", str(tmp_path / "m")],
        capsys,
        str(source),
        "pytorch_model.bin",
        "safetensors only",
        "save_pretrained('NEW')",
        "--allow-pickle",
    )
    assert not (tmp_path / "m").exists()

    assert (
        main(
            [
                "step",
                "prepare",
                "--model",
                str(source),
                "--task",
                "sst2",
                "--allow-pickle",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m" / "model.safetensors").is_file()  # converted: every later stage reads safetensors


def test_prune_refuses_a_pickle_checkpoint_before_any_work(tmp_path, capsys):
    source = _pickle_only(tmp_path / "pickled")
    (tmp_path / "train.tsv").write_text(GOOD_ROWS)
    _fails_in_one_line(
        [
            "prune",
            "--model",
            str(source),
            "--task",
            "sst2",
            "--train-data",
            str(tmp_path / "train.tsv"),
            "--constraint",
            "0.5",
            "--output",
            str(tmp_path / "out"),
        ],
        capsys,
        "--allow-pickle",
    )


# ----- the wrong stage folder -------------------------------------------------------------------------------------
def test_the_wrong_stage_folder_is_named(tmp_path, capsys):
    dense = _dense_folder(tmp_path / "dense")
    (tmp_path / "train.tsv").write_text(GOOD_ROWS)
    assert main(["step", "prepare", "--model", str(dense), "--task", "sst2", "--out", str(tmp_path / "model")]) == 0
    assert (
        main(
            [
                "step",
                "sample",
                "--train-data",
                str(tmp_path / "train.tsv"),
                "--task",
                "sst2",
                "--num-samples",
                "4",
                "--out",
                str(tmp_path / "sample"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    _fails_in_one_line(
        [
            "step",
            "search",
            "--model",
            str(tmp_path / "model"),
            "--grads",
            str(tmp_path / "sample"),
            "--constraint",
            "0.5",
            "--out",
            str(tmp_path / "searched"),
        ],
        capsys,
        f"--grads {tmp_path / 'sample'} is the output of stage 'sample'",
        "stage fisher",
    )
    _fails_in_one_line(
        [
            "step",
            "fisher",
            "--model",
            str(tmp_path / "sample"),
            "--sample",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "grads"),
        ],
        capsys,
        "is the output of stage 'sample'",
        "prepare or export",
    )


# ----- tampered pruned configs ---------------------------------------------------------------------------------------
def _tamper(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _set_structure(key: str, values):
    return lambda c: c[STRUCTURE_KEY].__setitem__(key, values)


@pytest.mark.parametrize(
    "change, expected",
    [
        (_set_structure("num_heads", [2, 11.5]), "num_heads must list 2 integers from 0 to 4"),
        (_set_structure("num_heads", [2, -1]), "num_heads must list 2 integers"),
        (_set_structure("num_heads", [2]), "num_heads must list 2 integers"),
        (
            _set_structure("num_heads", [2, 3]),
            "encoder.layer.1.attention.self.query.weight should be [24, 32], the file's is of shape [32, 32]",
        ),
        (_set_structure("intermediate_size", [64, 10**12]), "intermediate_size must list 2 integers from 0 to 64"),
        (_set_structure("intermediate_size", [64, 24]), "encoder.layer.1.intermediate.dense.weight should be [24, 32]"),
        (lambda c: c.update(num_attention_heads=5), "hidden size 32 is not a multiple of the 5 heads"),
        (lambda c: c.update(vocab_size=10**12), "word_embeddings.weight should be [1000000000000, 32]"),
        (
            lambda c: c.update(architectures=["pipeline"]),
            "expected exactly one of ['BertForQuestionAnswering', 'BertForSequenceClassification', 'BertModel']",
        ),
        (lambda c: c.update(architectures=["Trainer"]), "names architectures ['Trainer']"),
        (lambda c: c.update(architectures=["BertForMaskedLM"]), "names architectures ['BertForMaskedLM']"),
        (lambda c: c.update(model_type="gpt2"), "unsupported architecture"),
    ],
)
def test_a_tampered_pruned_config_is_refused_before_allocating(change, expected, tmp_path, capsys):
    folder = _pruned_folder(tmp_path / "pruned")
    _tamper(folder, change)
    start = time.monotonic()
    with pytest.raises(IntegrityError) as info:
        load_pruned(folder)
    assert expected in str(info.value) and str(folder) in str(info.value)
    assert time.monotonic() - start < 5
    _fails_in_one_line(["profile", "--model", str(folder), "--output", str(tmp_path / "p.json")], capsys, expected)


def test_a_huge_dense_size_in_a_pruned_config_allocates_nothing(tmp_path):
    """The dense intermediate size of a pruned model cannot be checked against its weights: it is never allocated
    (the model is built at the size of its largest kept FFN), and the config keeps the value."""
    folder = _pruned_folder(tmp_path / "pruned")
    expected, _ = load_pruned(folder)
    _tamper(folder, lambda c: c.update(intermediate_size=10**12))
    start = time.monotonic()
    model, _ = load_pruned(folder)
    assert time.monotonic() - start < 5
    assert model.config.intermediate_size == 10**12
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in expected.parameters())
    ids = torch.tensor([[2, 40, 50, 3]])
    assert torch.allclose(model(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_a_dense_folder_whose_config_disagrees_with_its_weights_is_refused(tmp_path):
    folder = _dense_folder(tmp_path / "dense")
    _tamper(folder, lambda c: c.update(intermediate_size=10**12))
    with pytest.raises(IntegrityError, match=r"layer.0.intermediate.dense.weight should be \[1000000000000, 32\]"):
        load_pruned(folder)
    assert os.path.getsize(folder / "model.safetensors") < 10**8
