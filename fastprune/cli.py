"""The ``fastprune`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

from fastprune.common.errors import FastpruneError
from fastprune.ops_cli import COMMANDS as OPS_COMMANDS

log = logging.getLogger("fastprune")


def _ridge(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number >= 0 or 'auto', not {text!r}") from None


def _add_prune(p) -> None:
    p.add_argument("--model", required=True, help="fine-tuned model folder (or hub id)")
    p.add_argument("--task", required=True, help="sst2, mrpc, stsb, rte, qnli, mnli, qqp, cola, squad, squad_v2")
    p.add_argument("--train-file", required=True, help="training data (tsv/csv/json/jsonl/parquet) or hub id")
    p.add_argument("--dev-file", help="dev data for evaluation")
    p.add_argument("--constraint", type=float, required=True, help="fraction of FLOPs/latency to keep, in (0, 1)")
    p.add_argument("--metric", choices=["flops", "latency"], default="flops")
    p.add_argument("--allocation", choices=["global", "block", "uniform"], default="global",
                   help="how the search splits the budget between layers: global (the paper: all units ranked by "
                   "diagonal Fisher), block (by the block-diagonal Fisher cost of pruning within each layer) or "
                   "uniform (the same counts in every layer); the tuning's re-split follows it (FLOPs only)")
    p.add_argument("--latency-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="latency mode: the dtype the model will serve in, which the latency table measures "
                   "(float16/bfloat16 on CUDA only)")
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-replace", action="store_true", help="sample without replacement")
    p.add_argument("--batch-size", type=int, help="mini-batch size of the sample")
    p.add_argument("--max-length", type=int)
    p.add_argument("--seq-len", type=float, help="sequence length of the MAC model (default: sample mean)")
    p.add_argument("--fisher-steps", type=int,
                   help="iterative Fisher: reach the budget in K steps, re-measuring importance (1: one-shot)")
    p.add_argument("--fisher-labels", choices=["data", "model"],
                   help="labels of the Fisher loss: the sample's, or drawn from the model (y ~ p(y|x))")
    p.add_argument("--teacher", choices=["schedule", "dense"],
                   help="tuning teacher: the model masked at sqrt(C) (the paper's) or the dense one (default: schedule "
                   "for scales, dense for refit/reselect)")
    p.add_argument("--tuning-policy", choices=["stop", "ridge"])
    p.add_argument("--tuning-mode", choices=["scales", "refit", "reselect"],
                   help="refit (default): refit the kept output-projection weights by least squares; scales: a scale "
                   "per kept unit (the paper); reselect: re-choose each block's units by least squares, then refit")
    p.add_argument("--tuning-ridge", type=_ridge, metavar="RIDGE|auto",
                   help="damping of the least squares (default 1e-4 scales, 1e-2 refit); auto (refit, reselect): "
                   "each block's by cross-validation")
    p.add_argument("--tuning-resplit", action=argparse.BooleanOptionalAction,
                   help="(default on) before tuning each layer, re-split the budget left across it and the layers "
                   "above, with Fisher importance re-measured on the tuned layers below (K-prune style); "
                   "--no-tuning-resplit keeps the search's split")
    p.add_argument("--no-tuning", action="store_true")
    p.add_argument("--tuning-samples", type=int, default=512, help="examples used for tuning (0: the whole sample)")
    p.add_argument(
        "--holdout", type=float, default=0.0,
        help="fraction of the sample held out to keep rearrangement/tuning only where they lower its loss",
    )  # fmt: skip
    p.add_argument("--no-rearrange", action="store_true")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--text-columns", nargs="+")
    p.add_argument("--label-column")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--output", required=True, help="output folder: model/, masks.safetensors, summary.json")
    _add_overwrite(p)
    p.set_defaults(func=_prune)


def _add_overwrite(p, what: str = "folder") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace a non-empty output {what} (whole, once the new "
                   "result is complete; without it such an output is refused before any work)")


def _prune(args) -> int:
    from fastprune.common.config import FisherConfig, PruneConfig, SampleConfig, TuningConfig
    from fastprune.common.prune import format_summary, prune

    cfg = PruneConfig(
        model=args.model,
        task=args.task,
        train_file=args.train_file,
        dev_file=args.dev_file,
        constraint=args.constraint,
        metric=args.metric,
        latency_dtype=args.latency_dtype,
        allocation=args.allocation,
        seq_len=args.seq_len,
        sample=SampleConfig(
            num_samples=args.num_samples,
            seed=args.seed,
            replace=not args.no_replace,
            batch_size=args.batch_size,
            max_length=args.max_length,
            holdout=args.holdout,
        ),
        fisher=FisherConfig(**_given(steps=args.fisher_steps, labels=args.fisher_labels)),
        tuning=TuningConfig(enabled=not args.no_tuning, num_samples=args.tuning_samples or None, **_given(
            teacher=args.teacher, policy=args.tuning_policy, mode=args.tuning_mode, ridge=args.tuning_ridge,
            resplit=args.tuning_resplit)),
        rearrange=not args.no_rearrange,
        device=args.device,
        text_columns=args.text_columns,
        label_column=args.label_column,
        trust_remote_code=args.trust_remote_code,
    )
    summary = prune(cfg, args.output, overwrite=args.overwrite)
    print(format_summary(summary))
    print(f"  model: {args.output}/model   summary: {args.output}/summary.json")
    return 0


def _given(**options):
    """The options set on the command line (the others keep the library's defaults)."""
    return {k: v for k, v in options.items() if v is not None}


def _add_demo(p) -> None:
    p.add_argument("--constraint", type=float, default=0.5)
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--output", default="runs/demo")
    _add_overwrite(p)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from fastprune.common.config import PruneConfig, SampleConfig
    from fastprune.common.outputs import check_output
    from fastprune.common.prune import format_summary, prune
    from fastprune.defaults import SST2_DEV, SST2_TRAIN, finetuned_minilm

    check_output(args.output, args.overwrite)  # before the default model is fine-tuned (minutes, once)
    cfg = PruneConfig(
        model=str(finetuned_minilm()),
        task="sst2",
        train_file=str(SST2_TRAIN),
        dev_file=str(SST2_DEV),
        constraint=args.constraint,
        sample=SampleConfig(num_samples=args.num_samples),
    )
    print(format_summary(prune(cfg, args.output, overwrite=args.overwrite)))
    print(f"  model: {args.output}/model   summary: {args.output}/summary.json")
    return 0


# ----- the pipeline: compile, run (kfp.local or a cluster), and its stages one by one ---------------------------
def _boolean(text: str) -> bool:
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"true or false, not {text!r}")
    return words[text.lower()]


_KFP_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": _boolean}
_EMBEDDED = ("model", "train_data", "dev_data")


def _add_profile(p) -> None:
    p.add_argument("--model", required=True, help="a model folder (fine-tuned, or exported by fastprune)")
    p.add_argument("--pruned", help="a second model to compare against the first (adds a speedup key)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32])
    p.add_argument("--seq-len", type=int, nargs="+", default=[128])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", required=True, help="JSON file for the figures")
    _add_overwrite(p, "file")
    p.set_defaults(func=_profile)


def _profile(args) -> int:
    import json

    from fastprune.common.export import load_pruned
    from fastprune.common.latency import profile_models
    from fastprune.common.models import check_device, resolve_device
    from fastprune.common.outputs import check_output, staged_file
    from fastprune.common.preflight import check_exists

    device = resolve_device(check_device(args.device))
    output = check_output(args.output, args.overwrite, kind="file")
    for name in ("model", "pruned"):
        check_exists(getattr(args, name), f"--{name}")
    models = {"original": load_pruned(args.model, device, with_tokenizer=False)[0]}
    if args.pruned:
        models["pruned"] = load_pruned(args.pruned, device, with_tokenizer=False)[0]
    result = profile_models(models, args.batch_size, args.seq_len, device, args.dtype, args.repeats, args.warmup,
                            vocab_size=models["original"].config.vocab_size)  # fmt: skip
    figures = result.to_dict()
    if args.pruned:
        figures["speedup"] = {f"{e.dtype}/b{e.batch_size}/s{e.seq_len}": e.speedup for e in result.entries
                              if e.model == "pruned"}  # fmt: skip
    with staged_file(output) as staged:
        staged.write_text(json.dumps(figures, indent=2))
    print(result.to_markdown())
    return 0


def _add_compile(p) -> None:
    from fastprune.components import BASE_IMAGE

    p.add_argument("--output", default="pipeline.yaml")
    p.add_argument("--image", default=BASE_IMAGE, help="the image every step runs in (default: %(default)s)")
    _add_overwrite(p, "file")
    p.set_defaults(func=_compile)


def _compile(args) -> int:
    from fastprune.common.outputs import check_output, staged_file
    from fastprune.pipelines.prune_pipeline import compile_pipeline

    output = check_output(args.output, args.overwrite, kind="file")
    with staged_file(output) as staged:
        compile_pipeline(str(staged), args.image)
    print(f"fastprune: pipeline written to {output}")
    return 0


def _add_run(p) -> None:
    from fastprune.pipelines.prune_pipeline import fastprune_pipeline

    p.description = ("Without --model: the embedded default (MiniLM fine-tuned on the bundled SST-2 data), "
                     "registered in a local MLflow under runs/ unless --mlflow-uri or MLFLOW_TRACKING_URI names a "
                     "server. s3:// sources use the AWS_* environment.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run every step here with kfp.local")
    where.add_argument("--host", help="start a run on the Kubeflow Pipelines server at this URL")
    p.add_argument("--pipeline-root", default="runs/pipeline", help="local artifacts (default: %(default)s)")
    for name, spec in fastprune_pipeline.component_spec.inputs.items():
        default = f"the embedded SST-2 one with --local, {spec.default!r} with --host" if name in _EMBEDDED else (
            repr(spec.default))
        p.add_argument(f"--{name.replace('_', '-')}", type=_KFP_TYPES[spec.type], help=f"default: {default}")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import os

    from fastprune.pipelines.prune_pipeline import fastprune_pipeline

    names = fastprune_pipeline.component_spec.inputs
    arguments = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "mlflow_uri" not in arguments and os.environ.get("MLFLOW_TRACKING_URI"):
        arguments["mlflow_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    if args.host:
        from fastprune.ops_cli import submit_now

        return submit_now(args.host, arguments)
    return _run_local(args, arguments)


def _run_local(args, arguments: dict) -> int:
    from fastprune.common.preflight import check_pipeline_inputs
    from fastprune.pipelines.local import local_mlflow, run_local

    check_pipeline_inputs(arguments, args.pipeline_root)

    if "model" not in arguments:
        from fastprune.defaults import SST2_DEV, SST2_TRAIN, finetuned_minilm

        # the small MiniLM loses about 1.5 points at 60% of the FLOPs: the demo's gate allows 2
        arguments = {"model": str(finetuned_minilm()), "train_data": str(SST2_TRAIN), "dev_data": str(SST2_DEV),
                     "max_metric_drop": 2.0, **arguments}
    if not arguments.get("mlflow_uri"):
        mlflow_dir = Path(args.pipeline_root).parent / "mlflow"
        arguments["mlflow_uri"] = local_mlflow(mlflow_dir, arguments.get("mlflow_experiment", "fastprune"))
    run = run_local(arguments, args.pipeline_root)
    r = run.registration
    alias = f"alias {r['alias']} -> version {r['version']}" if r["alias"] else "alias not moved"
    print(f"\nfastprune: registered {r['model_name']} version {r['version']} ({alias})\n  gate {r['gate']}: "
          f"{r['gate_reason']}\n  report: {run.artifact('register-model', 'registration') / 'report.md'}\n"
          f"  artifacts: {run.folder}")
    if arguments["mlflow_uri"].startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {arguments['mlflow_uri']}")
    else:
        print(f"  MLflow: {r['tracking_uri']}")
    uri = f"models:/{r['model_name']}@{r['alias']}" if r["alias"] else r["model_uri"]
    print(f"  load: mlflow.pyfunc.load_model('{uri}')")
    return 0


def _add_step(p) -> None:
    from fastprune.common.stages import STAGES

    stages = p.add_subparsers(dest="stage", required=True)
    for name, stage in STAGES.items():
        s = stages.add_parser(name, help=stage.doc, description=stage.doc)
        s.add_argument("--out", required=True, help="the folder this stage writes")
        _add_overwrite(s)
        for folder in stage.inputs + stage.optional:
            s.add_argument(f"--{folder}", required=folder in stage.inputs, help="a folder written by an earlier step")
        _add_fields(s, stage.params)
        s.set_defaults(func=_step)


def _add_fields(parser, model) -> None:
    """One flag per field of a flat pydantic model; unset flags keep the model's defaults."""
    for name, field in model.model_fields.items():
        flag, kinds = f"--{name.replace('_', '-')}", [field.annotation, *get_args(field.annotation)]
        kw = {"help": field.description, "required": field.is_required()}
        if bool in kinds:
            kw["action"] = argparse.BooleanOptionalAction
        elif any(get_origin(k) is list for k in kinds):
            kw["nargs"] = "+"
        elif literal := next((k for k in kinds if get_origin(k) is Literal), None):
            kw["choices"] = get_args(literal)
        else:
            kw["type"] = next(k for k in (int, float, str) if k in kinds)
        parser.add_argument(flag, **kw)


def _step(args) -> int:
    import json

    from fastprune.common.outputs import check_output
    from fastprune.common.stages import STAGES, run_stage

    stage = STAGES[args.stage]
    check_output(args.out, args.overwrite)
    params = {k: v for k, v in vars(args).items() if k in stage.params.model_fields and v is not None}
    folders = {k: getattr(args, k) for k in stage.inputs + stage.optional if getattr(args, k) is not None}
    info = run_stage(args.stage, args.out, params, **folders)
    short = {k: v for k, v in info.items() if not isinstance(v, dict | list)}
    print(json.dumps(short, indent=1))
    return 0


_COMMANDS = {
    "prune": (_add_prune, "prune a fine-tuned model end to end"),
    "demo": (_add_demo, "prune the embedded default (MiniLM fine-tuned on bundled SST-2 data)"),
    "run": (_add_run, "run the pipeline locally (kfp.local) or on a Kubeflow cluster"),
    "profile": (_add_profile, "measure end-to-end latency of a model (and a pruned one) on this device"),
    "compile": (_add_compile, "compile the Kubeflow pipeline to YAML"),
    "step": (_add_step, "run one stage of the pipeline on folders, as the pipeline's steps do"),
}
_COMMANDS.update(OPS_COMMANDS)  # submit, sweep, trigger (fastprune/ops_cli.py)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` gets its arguments (the others' imports are slow)."""
    parser = argparse.ArgumentParser(prog="fastprune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for name, (add, help) in _COMMANDS.items():
        command = sub.add_parser(name, help=help, description=help)
        if name == chosen:
            add(command)
    return parser


def _one_line(error: ValidationError) -> str:
    """A pydantic error as one line: each bad field and what is valid."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from fastprune.common.interrupts import Terminated, install_signal_handlers

    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_signal_handlers()  # SIGTERM/SIGHUP raise, so that scratch and staging folders are removed
    try:
        return args.func(args)
    except ValidationError as e:
        print(f"fastprune: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FastpruneError as e:
        print(f"fastprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastprune: interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"fastprune: {e}; nothing half-written was left", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
