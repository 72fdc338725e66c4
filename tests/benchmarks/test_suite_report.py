"""The benchmark suite's report: its verdicts on the targets come from the recorded runs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import report  # noqa: E402
import suite  # noqa: E402


def _run(task, method, seed, constraint, tuning, seconds=30.0):
    return {
        "kind": "method",
        "task": task,
        "method": method,
        "seed": seed,
        "constraint": constraint,
        "tuning": tuning,
        "prune_seconds": seconds,
        "metric": "accuracy",
        "unpruned": 86.0,
    }


def _records(sst2_at_06, sst2_seconds, mrpc_at_05):
    model = {"kind": "model", "task": "sst2", "unpruned": 86.0, "task_kind": "classification"}
    records = [model, {**model, "task": "mrpc", "unpruned": 80.0}]
    for seed, (a, b, s) in enumerate(zip([85.8, 85.6, 85.7], sst2_at_06, sst2_seconds, strict=True)):
        records += [_run("sst2", report.DEFAULT, seed, 0.5, a, s), _run("sst2", report.DEFAULT, seed, 0.6, b, s)]
    for seed in range(2):
        records += [
            _run("mrpc", report.PAPER, seed, 0.4, 70.0),
            _run("mrpc", report.DEFAULT, seed, 0.4, 75.0 + seed),
            _run("mrpc", report.PAPER, seed, 0.5, 74.0),
            _run("mrpc", report.DEFAULT, seed, 0.5, mrpc_at_05),
        ]
    return report.Results(records)


def test_accuracy_targets_are_judged_from_the_runs():
    lines = "\n".join(report.accuracy_section(_records([86.0, 85.9, 86.0], [30.0, 35.0, 38.0], 76.0)))
    assert "SST-2 @ 0.5: drop 0.30 (mean of 3 seeds" in lines and "target ≤ 0.4: **met**" in lines
    assert "SST-2 @ 0.6: drop 0.03" in lines and "target ≤ 0.1: **met**" in lines
    assert "mean 34.3 s, 30.0-38.0 s over 6 runs; target ≤ 40 s: **met**" in lines
    assert "| MRPC | 0.4 | 70.00 ± 0.00 | 75.50 ± 0.71 | 5.50 ± 0.71 | yes |" in lines

    lines = "\n".join(report.accuracy_section(_records([85.0, 86.0, 86.0], [30.0, 45.0, 50.0], 73.0)))
    assert "SST-2 @ 0.6: drop 0.33" in lines and "target ≤ 0.1: **missed**" in lines
    assert "mean 41.7 s" in lines and "target ≤ 40 s: **missed**" in lines
    assert "| MRPC | 0.5 | 74.00 ± 0.00 | 73.00 ± 0.00 | -1.00 ± 0.00 | **no** |" in lines


def test_sessions_list_only_those_whose_runs_the_report_shows():
    def session(started, minutes, tasks):
        return {
            "kind": "session",
            "started": started,
            "seconds": minutes * 60.0,
            "tasks": tasks,
            "mode": "custom",
            "seeds": [0],
            "constraints": [0.5],
            "methods": [report.DEFAULT],
        }

    def run(task, time):
        return {**_run(task, report.DEFAULT, 0, 0.5, 85.0), "time": time}

    records = [
        session("2026-11-27T10:00:00+00:00", 10, ["sst2"]),  # its run was rerun later: not listed
        session("2026-11-27T11:00:00+00:00", 10, ["sst2", "rte"]),
        run("sst2", "2026-11-27T11:05:00+00:00"),
        run("rte", "2026-11-27T11:09:59+00:00"),
        run("mrpc", "2026-11-27T11:06:00+00:00"),  # another task: written by a run that did not finish
        run("rte", "2026-11-27T12:00:00+00:00"),
    ]
    lines = "\n".join(report.machine_section(report.Results(records)))
    assert "2026-11-27T10:00:00" not in lines and "Not listed: 1 earlier session(s)" in lines
    assert "| 2026-11-27T11:00:00+00:00 | custom | sst2 rte | 0 | 0.5 | refit-resplit | 10.0 | 2 |" in lines
    assert "2 run(s) come from sessions that did not finish" in lines


def test_the_suite_refuses_to_mix_runs_of_two_fine_tunes(tmp_path):
    jsonl = tmp_path / "suite.jsonl"
    records = [
        _run("sst2", report.DEFAULT, 0, 0.5, 85.0),
        {**_run("mrpc", report.DEFAULT, 0, 0.5, 75.0), "unpruned": 80.0},
    ]
    jsonl.write_text("".join(json.dumps({**r, "key": f"k{i}"}) + "\n" for i, r in enumerate(records)))
    suite.check_same_model(jsonl, "sst2", tmp_path / "model", 86.0)  # the model the runs used
    suite.check_same_model(jsonl, "rte", tmp_path / "model", 60.0)  # no runs of the task yet
    with pytest.raises(SystemExit, match=r"scores 80\.50 unpruned, but the runs of mrpc .* scoring 80\.00"):
        suite.check_same_model(jsonl, "mrpc", tmp_path / "model", 80.5)
