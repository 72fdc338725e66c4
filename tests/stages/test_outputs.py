"""A prune finishes whole or leaves nothing (issue 15, items 1-4): atomic outputs that never overwrite unasked,
scratch and staging removed on every catchable exit and swept after a SIGKILL, every input and output checked and
an unknown or absent device refused before the model is loaded."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from fastprune.common.errors import ConfigError
from fastprune.common.folders import check_output, staged_folder
from fastprune.common.model.loading import available_devices, check_device
from tiny import SST2, tiny_model, tiny_tokenizer

from fastprune.cli import main

TRAIN, DEV = str(SST2 / "train.tsv"), str(SST2 / "dev.tsv")
QUICK = ("--no-tune", "--no-rearrange", "--num-samples", "32", "--seed", "0", "--device", "cpu")


def _one_error_line(err: str) -> bool:
    """The error is one line of its own (other lines may be log records of earlier in-process commands)."""
    lines = [line for line in err.splitlines() if line.startswith("fastprune: error:")]
    return len(lines) == 1


def _prune(model, out, *extra, dev=DEV, train=TRAIN, constraint="0.5"):
    argv = [
        "prune",
        "--model",
        str(model),
        "--task",
        "sst2",
        "--train-data",
        str(train),
        "--constraint",
        constraint,
        "--output",
        str(out),
        *extra,
    ]
    return main(argv + (["--dev-data", str(dev)] if dev else []))


def _leftovers(*folders: Path) -> list[str]:
    """Staging and scratch folders of fastprune under ``folders``."""
    return sorted(
        p.name
        for f in folders
        if f.is_dir()
        for p in f.iterdir()
        if p.name.endswith(".partial") or p.name.startswith("fastprune-")
    )


@pytest.fixture
def untuned_model(tmp_path):
    """A model that is not fine-tuned for any task (loading it for sst2 fails)."""
    from transformers import BertModel

    BertModel(tiny_model("bert").config).save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    return tmp_path / "base"


# ----- 1. atomic outputs, never overwritten unasked ------------------------------------------------------------
def test_a_non_empty_output_folder_is_refused_up_front(untuned_model, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "mine.txt").write_text("the user's")
    assert _prune(untuned_model, out, *QUICK) == 2  # refused before the (unusable) model is even loaded
    err = capsys.readouterr().err
    assert f"output folder {out} is not empty" in err and "--overwrite" in err and _one_error_line(err)
    assert (out / "model" / "mine.txt").read_text() == "the user's"


def test_a_failed_overwrite_keeps_the_old_result_and_a_complete_one_replaces_it(tiny_sst2_model, tmp_path, monkeypatch):
    import fastprune.common.stages.prune as prune_module

    out = tmp_path / "out"
    assert _prune(tiny_sst2_model, out, *QUICK, constraint="0.6") == 0
    old = (out / "summary.json").read_text()
    (out / "model" / "mine.txt").write_text("the user's")
    real = prune_module.run_stage

    def failing(name, *args, **kwargs):
        if name == "evaluate":  # after the new model and masks were written
            raise ConfigError("evaluation failed")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(prune_module, "run_stage", failing)
    assert _prune(tiny_sst2_model, out, *QUICK, "--overwrite", constraint="0.4") == 2
    assert (out / "summary.json").read_text() == old and json.loads(old)["constraint"] == 0.6
    assert (out / "model" / "mine.txt").exists()  # the earlier result is whole, nothing of the new one mixed in
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(prune_module, "run_stage", real)
    assert _prune(tiny_sst2_model, out, *QUICK, "--overwrite", constraint="0.4") == 0
    assert json.loads((out / "summary.json").read_text())["constraint"] == 0.4
    assert not (out / "model" / "mine.txt").exists()  # replaced whole, as asked
    assert _leftovers(tmp_path) == []


def test_step_refuses_a_non_empty_out_unless_asked(tmp_path, capsys):
    out = tmp_path / "sample"
    argv = ["step", "sample", "--train-data", TRAIN, "--task", "sst2", "--num-samples", "8", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 2 and "is not empty" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_profile_and_compile_refuse_an_existing_file_unless_asked(tiny_sst2_model, tmp_path, capsys):
    existing = tmp_path / "lat.json"
    existing.write_text("mine")
    argv = [
        "profile",
        "--model",
        str(tiny_sst2_model),
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--output",
        str(existing),
    ]
    assert main(argv) == 2 and f"output file {existing} exists" in capsys.readouterr().err
    assert existing.read_text() == "mine"
    assert main([*argv, "--overwrite"]) == 0 and "p50" in existing.read_text()
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("mine")
    assert main(["compile", "--output", str(pipeline)]) == 2
    assert f"output file {pipeline} exists" in capsys.readouterr().err
    assert pipeline.read_text() == "mine"
    assert main(["compile", "--output", str(pipeline), "--overwrite"]) == 0
    assert "PIPELINE DEFINITION" in pipeline.read_text()
    assert _leftovers(tmp_path) == []


def test_demo_refuses_a_non_empty_output_before_fine_tuning(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "summary.json").write_text("{}")
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_staging_replaces_only_once_complete(tmp_path):
    destination = tmp_path / "result"
    destination.mkdir()
    (destination / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(destination) as staged:
        (staged / "new.txt").write_text("new")
        raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"] and (destination / "old.txt").exists()
    with staged_folder(destination) as staged:
        (staged / "new.txt").write_text("new")
    assert [p.name for p in destination.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_staging_a_cache_entry_keeps_what_a_concurrent_run_published_first(tmp_path):
    """finetuned_minilm's cache: each run stages its own folder (no shared fixed name), the first rename wins."""
    destination = tmp_path / "models" / "minilm"
    with staged_folder(destination, keep_existing=True) as slow:
        (slow / "weights").write_text("slow run")
        with staged_folder(destination, keep_existing=True) as fast:  # a concurrent run that finishes first
            assert fast != slow
            (fast / "weights").write_text("fast run")
        assert (destination / "weights").read_text() == "fast run"
    assert (destination / "weights").read_text() == "fast run"
    assert [p.name for p in destination.parent.iterdir()] == ["minilm"]


# ----- 2. scratch and staging removed on SIGINT/SIGTERM, swept after SIGKILL -------------------------------------
_SLOW_PRUNE = """
import sys, time
from pathlib import Path
import fastprune.common.stages.prune as prune_module
real = prune_module.run_stage
def slow(name, *args, **kwargs):
    info = real(name, *args, **kwargs)
    if name == "fisher":  # mid-run: the scratch folder and the output's staging folder exist
        Path(sys.argv[1]).write_text("fisher done")
        time.sleep(300)
    return info
prune_module.run_stage = slow
from fastprune.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_slow_prune(model: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    scratch, marker, out = tmp_path / "tmp", tmp_path / "marker", tmp_path / "outputs" / "out"
    scratch.mkdir()
    argv = [
        "prune",
        "--model",
        str(model),
        "--task",
        "sst2",
        "--train-data",
        TRAIN,
        "--constraint",
        "0.5",
        "--output",
        str(out),
        *QUICK,
    ]
    env = {**os.environ, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PRUNE, str(marker), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a pytest-xdist worker ignores SIGINT, and a child inherits that (Python then never
        # raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the prune never reached its Fisher stage"
        time.sleep(0.1)
    assert _leftovers(scratch) and _leftovers(out.parent), "mid-run, scratch and staging folders exist"
    return proc, scratch, out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_prune_leaves_nothing(tiny_sst2_model, tmp_path, sig, code):
    proc, scratch, out = _start_slow_prune(tiny_sst2_model, tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "nothing half-written was left" in err
    assert _leftovers(scratch) == [] and _leftovers(out.parent) == [] and not out.exists()


def test_what_a_killed_prune_left_is_swept_by_the_next_run(tiny_sst2_model, tmp_path, monkeypatch):
    proc, scratch, out = _start_slow_prune(tiny_sst2_model, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    left = _leftovers(scratch) + _leftovers(out.parent)
    assert any(n.startswith(f"fastprune-p{proc.pid}.") for n in left), left
    assert any(n.startswith(f".out.p{proc.pid}.") for n in left), left
    other = scratch / "fastprune-not-ours"  # someone else's: not ours to remove
    other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert _prune(tiny_sst2_model, out, *QUICK) == 0
    assert _leftovers(scratch) == ["fastprune-not-ours"] and _leftovers(out.parent) == []
    assert (out / "summary.json").is_file()


# ----- 3. every input and output checked before the model is loaded ---------------------------------------------
def test_a_missing_dev_file_is_refused_before_the_model_is_loaded(untuned_model, tmp_path, capsys):
    missing = tmp_path / "nope" / "dev.tsv"
    assert _prune(untuned_model, tmp_path / "out", *QUICK, dev=missing) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not fine-tuned" not in err
    assert not (tmp_path / "out").exists()


def test_dev_labels_are_parsed_before_the_model_is_loaded(untuned_model, tmp_path, capsys):
    bad = tmp_path / "dev.tsv"
    bad.write_text("sentence\tlabel\na fine movie\t1\na dull one\tbanana\n")
    assert _prune(untuned_model, tmp_path / "out", *QUICK, dev=bad) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'banana'" in err and "not fine-tuned" not in err
    # the same for a stage run alone: prepare reads its dev data before the model
    code = main(
        [
            "step",
            "prepare",
            "--model",
            str(untuned_model),
            "--task",
            "sst2",
            "--dev-data",
            str(bad),
            "--out",
            str(tmp_path / "prepared"),
        ]
    )
    assert code == 2 and "'banana'" in capsys.readouterr().err


def test_a_missing_training_file_is_refused_before_the_model_is_loaded(untuned_model, tmp_path, capsys):
    assert _prune(untuned_model, tmp_path / "out", *QUICK, train=tmp_path / "train.tsv") == 2
    err = capsys.readouterr().err
    assert "train.tsv" in err and "does not exist" in err and "not fine-tuned" not in err


def test_unusable_output_paths_are_refused_up_front(untuned_model, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    assert _prune(untuned_model, a_file / "out", *QUICK) == 2
    assert f"{a_file} is a file, not a folder" in capsys.readouterr().err
    assert _prune(untuned_model, a_file, *QUICK) == 2
    assert f"output folder {a_file} exists and is a file" in capsys.readouterr().err
    assert a_file.read_text() == "mine"


def test_an_unwritable_output_is_refused_up_front(untuned_model, tmp_path, capsys):
    locked = Path("/proc/sys") if os.geteuid() == 0 else tmp_path / "locked"
    if locked != Path("/proc/sys"):
        locked.mkdir()
        locked.chmod(0o500)
    if os.access(locked, os.W_OK):
        pytest.skip(f"{locked} is writable here")
    assert _prune(untuned_model, locked / "out", *QUICK) == 2
    assert f"no write permission on {locked}" in capsys.readouterr().err


def test_the_local_pipeline_launchers_check_their_inputs_first(tmp_path, capsys):
    assert (
        main(["run", "--local", "--model", str(tmp_path / "missing-model"), "--pipeline-root", str(tmp_path / "runs")])
        == 2
    )
    assert "missing-model" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    bad = tmp_path / "dev.tsv"
    bad.write_text("sentence\tlabel\na dull one\tbanana\n")
    assert main(["sweep", "--local", "--dev-data", str(bad), "--pipeline-root", str(tmp_path / "runs")]) == 2
    assert "'banana'" in capsys.readouterr().err
    a_file = tmp_path / "root"
    a_file.write_text("mine")
    assert main(["run", "--local", "--pipeline-root", str(a_file)]) == 2
    assert "exists and is a file" in capsys.readouterr().err


# ----- 4. unknown or unavailable devices refused first ------------------------------------------------------------
def test_check_device_names_what_is_available():
    here = available_devices()
    assert here[0] == "cpu" and check_device("cpu") == "cpu" and check_device("auto") == "auto"
    with pytest.raises(ConfigError, match=r"unknown device 'tpu7'.*available here: cpu"):
        check_device("tpu7")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"device 'cuda:{count}' is not available.*available: cpu"):
        check_device(f"cuda:{count}")
    assert check_device("cuda:3", available=False) == "cuda:3"  # a cluster's devices are checked by its steps
    if not count:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            check_device("cuda")
    if "mps" not in here:
        with pytest.raises(ConfigError, match="no Apple MPS"):
            check_device("mps")


@pytest.mark.parametrize("device", ["tpu7", "cuda:3", "mps", *([] if torch.cuda.is_available() else ["cuda"])])
def test_an_unavailable_device_is_refused_before_anything_else(tmp_path, capsys, device):
    if device == "mps" and "mps" in available_devices():
        pytest.skip("this machine has MPS")
    argv = [
        "prune",
        "--model",
        str(tmp_path / "missing"),
        "--task",
        "sst2",
        "--train-data",
        "missing.tsv",
        "--constraint",
        "0.5",
        "--output",
        str(tmp_path / "out"),
        "--device",
        device,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"'{device}'" in err and "available" in err and "cpu" in err and "Traceback" not in err
    assert _one_error_line(err) and "missing" not in err
    assert main(["profile", "--model", str(tmp_path), "--device", device, "--output", str(tmp_path / "p.json")]) == 2
    assert f"'{device}'" in capsys.readouterr().err
    assert (
        main(
            [
                "step",
                "fisher",
                "--model",
                str(tmp_path),
                "--sample",
                str(tmp_path),
                "--device",
                device,
                "--out",
                str(tmp_path / "grads"),
            ]
        )
        == 2
    )
    assert f"'{device}'" in capsys.readouterr().err


def test_check_output_rules(tmp_path):
    assert check_output(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")  # an empty folder is no one's work
    with pytest.raises(ConfigError, match="exists and is a folder"):
        check_output(tmp_path / "empty", kind="file")
