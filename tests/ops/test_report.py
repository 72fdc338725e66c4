"""Reports and the sweep's decision, on stage folders written the way the stages write them: the run report
(what was pruned as a picture, metrics before and after, speedup, seconds per stage, the gate), the Pareto plot
and the choice of the smallest or fastest candidate that passes the gate."""

import base64
import json
import re
import struct

import pytest
from fastprune.common.errors import ConfigError, IntegrityError
from fastprune.common.folders import STAGE_FILE, stage_info, write_manifest
from fastprune.common.ops.report import ParetoPoint, kept_units_picture, pareto_front, run_report
from fastprune.common.stages.sweep import Candidate, choose, select_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def _stage(folder, **info):
    folder.mkdir(parents=True)
    (folder / STAGE_FILE).write_text(json.dumps({"seconds": 1.0, "params": {}, **info}))
    write_manifest(folder)
    return folder


def _candidate(root, constraint, metric_after, params_after, latency_ms, metric="flops"):
    """The folders of one sweep candidate (search, export, evaluation, profile), with the figures given."""
    c = root / f"c{constraint}"
    return {
        "searched": _stage(c / "searched", stage="search", constraint=constraint, metric=metric),
        "pruned": _stage(
            c / "pruned",
            stage="export",
            flops_ratio=constraint - 0.01,
            params_before=1000,
            params_after=params_after,
            task="sst2",
            source="models:/m/1",
        ),
        "evaluation": _stage(
            c / "evaluation",
            stage="evaluate",
            metric="accuracy",
            metric_before=90.0,
            metric_after=metric_after,
            dev_examples=200,
        ),
        "profile": _stage(
            c / "profile",
            stage="profile",
            latency_before_ms=10.0,
            latency_after_ms=latency_ms,
            speedup=10.0 / latency_ms,
            device="cpu",
        ),
    }


@pytest.fixture
def candidates(tmp_path):
    # C=0.3 is smallest but fails the gate (max drop 2); C=0.5 passes and is smaller than C=0.7, which is fastest
    return [
        _candidate(tmp_path, 0.3, 80.0, 300, 4.0),
        _candidate(tmp_path, 0.5, 88.5, 500, 6.0),
        _candidate(tmp_path, 0.7, 89.5, 700, 3.0),
    ]


def test_the_smallest_passing_candidate_is_chosen_and_plotted(candidates, tmp_path):
    info = select_stage(tmp_path / "sweep", {"objective": "smallest", "max_drop": 2.0}, candidates)
    assert (info["chosen"], info["chosen_constraint"], info["num_passed"]) == (1, 0.5, 2)
    assert [c["passed"] for c in info["candidates"]] == [False, True, True]
    assert stage_info(tmp_path / "sweep")["chosen"] == 1

    png = (tmp_path / "sweep" / "pareto.png").read_bytes()
    assert _png_size(png)[0] > 300
    page = (tmp_path / "sweep" / "sweep.html").read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == png, "the HTML page is self-contained"
    assert "Registered <b>C=0.5</b>" in page and page.count("<tr>") == 4
    markdown = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "![" in markdown and "| C=0.3 |" in markdown and "**failed**" in markdown


def test_the_fastest_passing_candidate_is_chosen(candidates, tmp_path):
    info = select_stage(tmp_path / "sweep", {"objective": "fastest", "max_drop": 2.0}, candidates)
    assert info["chosen_constraint"] == 0.7


def test_the_fastest_is_chosen_on_onnx_latency_when_the_export_made_onnx_models(candidates, tmp_path):
    """Served as ONNX, C=0.5 is the fastest though C=0.7 is faster in torch: the ONNX latency decides."""
    for folders, onnx_ms in zip(candidates, (1.0, 1.5, 2.5), strict=True):
        info = json.loads((folders["profile"] / STAGE_FILE).read_text())
        (folders["profile"] / STAGE_FILE).write_text(json.dumps({**info, "latency_after_onnx_ms": onnx_ms}))
        write_manifest(folders["profile"])
    info = select_stage(tmp_path / "sweep", {"objective": "fastest", "max_drop": 2.0}, candidates)
    assert info["chosen_constraint"] == 0.5 and info["candidates"][1]["latency_onnx_ms"] == 1.5
    markdown = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "lowest measured latency of its ONNX model" in markdown and "ONNX ms" in markdown


def test_nothing_is_chosen_when_no_candidate_passes(candidates, tmp_path):
    info = select_stage(tmp_path / "sweep", {"objective": "smallest", "max_drop": 0.1}, candidates)
    assert info["chosen"] is None and info["registered"] is False
    assert "nothing registered" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_a_corrupted_candidate_is_refused(candidates, tmp_path):
    (candidates[1]["profile"] / STAGE_FILE).write_text("{}")
    with pytest.raises(IntegrityError, match=STAGE_FILE):
        select_stage(tmp_path / "sweep", {}, candidates)
    assert not (tmp_path / "sweep").exists()


def test_fastest_needs_every_passing_candidate_measured():
    unmeasured = Candidate(0, 0.5, "flops", "accuracy", 90, 89, 0.5, 100, 50, None, None, None, True, "ok")
    with pytest.raises(ConfigError, match="objective 'fastest' needs the latency"):
        choose([unmeasured], "fastest")
    assert choose([unmeasured], "smallest") is unmeasured


def test_pareto_front():
    points = [
        ParetoPoint("a", 0.3, 80, False),
        ParetoPoint("b", 0.5, 88, True),
        ParetoPoint("c", 0.6, 87, True),
        ParetoPoint("d", 0.7, 89, True),
    ]
    assert [p.label for p in pareto_front(points)] == ["a", "b", "d"]


STAGES = {
    "model": {"stage": "prepare", "seconds": 2.0},
    "sample": {
        "stage": "sample",
        "seconds": 1.0,
        "num_examples": 64,
        "train_file": "s3://d/train.tsv",
        "train_sha256": "ab" * 32,
    },
    "pruned": {
        "stage": "export",
        "seconds": 3.0,
        "task": "sst2",
        "source": "models:/bert/3",
        "flops_ratio": 0.412,
        "params_before": 1_000_000,
        "params_after": 700_000,
        "heads_per_layer": [4, 2, 1],
        "neurons_per_layer": [64, 30, 10],
    },
    "evaluation": {
        "stage": "evaluate",
        "seconds": 4.0,
        "metric": "accuracy",
        "metric_before": 91.0,
        "metric_after": 90.25,
        "metric_drop": 0.75,
        "dev_examples": 200,
        "metric_search": 85.0,
    },
    "profile": {
        "stage": "profile",
        "seconds": 5.0,
        "device": "cpu",
        "latency_before_ms": 12.0,
        "latency_after_ms": 6.0,
        "speedup": 2.0,
        "profile": {
            "entries": [
                {
                    "model": "original",
                    "dtype": "float32",
                    "batch_size": 2,
                    "seq_len": 16,
                    "p50_ms": 12.0,
                    "p90_ms": 13.0,
                    "throughput": 166.0,
                    "speedup": 1.0,
                }
            ]
        },
    },
}


def test_run_report_shows_what_was_pruned_metrics_speedup_time_and_gate(tmp_path):
    picture = kept_units_picture([4, 2, 1], 4, [64, 30, 10], 64, tmp_path / "kept_units.png")
    width, height = _png_size(picture.read_bytes())
    assert width > 400 and height > 100
    gate = {
        "passed": True,
        "reason": "accuracy 91.00 -> 90.25: a drop of 0.75 points, within the allowed 1",
        "pipeline_run": "run-7",
    }
    md, page = run_report(STAGES, gate, picture, "bert-pruned version 4", "champion").write(tmp_path)

    text = md.read_text()
    assert "Accuracy gate **passed**: accuracy 91.00 -> 90.25" in text and "Alias `champion` moved" in text
    assert "| accuracy | 91.00 | 90.25 | -0.75 points |" in text
    assert "| parameters | 1,000,000 | 700,000 | 70.0% kept |" in text
    assert "| latency p50 (cpu) | 12.00 ms | 6.00 ms | speedup 2.00× |" in text
    # embedded: the Kubeflow UI's Markdown view cannot follow a link to kept_units.png
    assert "![attention heads and FFN neurons kept per layer](data:image/png;base64," in text
    assert "noisy" not in text
    assert "| fisher |" not in text and "| evaluate | 4.0 |" in text and "| total | 15.0 |" in text
    assert "`[4, 2, 1]`" in text and "run-7" in text
    html = page.read_text()
    assert '<span class="passed">passed</span>' in html and "data:image/png;base64," in html

    noisy = {
        **STAGES,
        "profile": {**STAGES["profile"], "speedup_p10": 1.2, "speedup_p90": 2.9, "noisy": True, "repeats": 20},
    }
    text = run_report(noisy, gate, None, "x").markdown()
    assert "| latency p50 (cpu) | 12.00 ms | 6.00 ms | speedup 2.00× (p10-p90 1.20-2.90) **noisy** |" in text
    assert "**The latency measurement was noisy**: over 20 interleaved repeats" in text

    failed = run_report(STAGES, {"passed": False, "reason": "too much"}, None, "x", "champion").markdown()
    assert "Accuracy gate **failed**: too much." in failed and "left where it was" in failed
