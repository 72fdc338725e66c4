"""The ``fastprune`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from fastprune.common.errors import FastpruneError
from fastprune.common.ops.remote import apply_remote_timeouts, redact, secure_logging
from fastprune.onnx_cli import COMMANDS as ONNX_COMMANDS
from fastprune.ops_cli import COMMANDS as OPS_COMMANDS

log = logging.getLogger("fastprune")


def _add_prune(p) -> None:
    from fastprune.common.stages.config import PruneConfig
    from fastprune.flags import add_fields

    add_fields(p, PruneConfig, skip=("progress",))
    p.add_argument("--output", required=True, help="output folder: model/, masks.safetensors, summary.json")
    _add_overwrite(p)
    p.set_defaults(func=_prune)


def _add_overwrite(p, what: str = "folder") -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace a non-empty output {what} (whole, once the new "
        "result is complete; without it such an output is refused before any work)",
    )


def _prune(args) -> int:
    from fastprune.common.stages.config import PruneConfig
    from fastprune.common.stages.prune import format_summary, prune
    from fastprune.flags import values

    cfg = PruneConfig.model_validate(values(PruneConfig, args))
    summary = prune(cfg, args.output, overwrite=args.overwrite)
    print(format_summary(summary))
    print(f"  model: {args.output}/model   summary: {args.output}/summary.json")
    return 0


def _add_demo(p) -> None:
    p.add_argument("--constraint", type=float, default=0.5)
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--output", default="runs/demo")
    _add_overwrite(p)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from fastprune.common.folders import check_output
    from fastprune.common.stages.config import PruneConfig, SampleConfig
    from fastprune.common.stages.prune import format_summary, prune
    from fastprune.defaults import SST2_DEV, SST2_TRAIN, finetuned_minilm

    check_output(args.output, args.overwrite)  # before the default model is fine-tuned (minutes, once)
    cfg = PruneConfig(
        model=str(finetuned_minilm()),
        task="sst2",
        train_data=str(SST2_TRAIN),
        dev_data=str(SST2_DEV),
        constraint=args.constraint,
        sample=SampleConfig(num_samples=args.num_samples),
    )
    print(format_summary(prune(cfg, args.output, overwrite=args.overwrite)))
    print(f"  model: {args.output}/model   summary: {args.output}/summary.json")
    return 0


# ----- the pipeline: compile, run (kfp.local or a cluster), and its stages one by one ---------------------------
def _add_profile(p) -> None:
    p.add_argument("--model", required=True, help="a model folder (fine-tuned, or exported by fastprune)")
    p.add_argument("--pruned", help="a second model to compare against the first (adds a speedup key)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32])
    p.add_argument("--seq-len", type=int, nargs="+", default=[128])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--mode",
        nargs="+",
        choices=["forward", "prefill", "decode"],
        help="what to time (default: prefill and decode for a causal LM, one forward pass otherwise)",
    )
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", required=True, help="JSON file for the figures")
    _add_overwrite(p, "file")
    p.set_defaults(func=_profile)


def _profile(args) -> int:
    import json

    from fastprune.common.folders import check_output, staged_file
    from fastprune.common.model.export import load_pruned
    from fastprune.common.model.loading import check_device, resolve_device
    from fastprune.common.model.timing import default_modes, profile_models
    from fastprune.common.stages.preflight import check_exists

    device = resolve_device(check_device(args.device))
    output = check_output(args.output, args.overwrite, kind="file")
    for name in ("model", "pruned"):
        check_exists(getattr(args, name), f"--{name}")
    models = {"original": load_pruned(args.model, device, with_tokenizer=False)[0]}
    if args.pruned:
        models["pruned"] = load_pruned(args.pruned, device, with_tokenizer=False)[0]
    result = profile_models(
        models,
        args.batch_size,
        args.seq_len,
        device,
        args.dtype,
        args.repeats,
        args.warmup,
        vocab_size=models["original"].config.vocab_size,
        modes=args.mode or default_modes(models["original"]),
    )
    figures = result.to_dict()
    if args.pruned:
        figures["speedup"] = {
            f"{'' if e.mode == 'forward' else e.mode + '/'}{e.dtype}/b{e.batch_size}/s{e.seq_len}": e.speedup
            for e in result.entries
            if e.model == "pruned"
        }
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
    from fastprune.common.folders import check_output, staged_file
    from fastprune.pipelines.prune_pipeline import compile_pipeline

    output = check_output(args.output, args.overwrite, kind="file")
    with staged_file(output) as staged:
        compile_pipeline(str(staged), args.image)
    print(f"fastprune: pipeline written to {output}")
    return 0


def _add_run(p) -> None:
    from fastprune.ops_cli import add_param_flags

    p.description = (
        "Without --model: the embedded default (MiniLM fine-tuned on the bundled SST-2 data), "
        "registered in a local MLflow under runs/ unless --mlflow-uri or MLFLOW_TRACKING_URI names a "
        "server. s3:// sources use the AWS_* environment."
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run every step here with kfp.local")
    where.add_argument("--host", help="start a run on the Kubeflow Pipelines server at this URL")
    p.add_argument("--pipeline-root", default="runs/pipeline", help="local artifacts (default: %(default)s)")
    add_param_flags(p, ("prune",))
    p.set_defaults(func=_run)


def _run(args) -> int:
    import os

    from fastprune.ops_cli import pipeline_params

    arguments = pipeline_params(args, "prune").arguments()
    if "mlflow_uri" not in arguments and os.environ.get("MLFLOW_TRACKING_URI"):
        arguments["mlflow_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    if args.host:
        from fastprune.ops_cli import submit_now

        return submit_now(args.host, arguments)
    return _run_local(args, arguments)


def _run_local(args, arguments: dict) -> int:
    from fastprune.common.stages.preflight import check_pipeline_inputs
    from fastprune.defaults import with_default_model
    from fastprune.pipelines.local import local_mlflow, run_local

    check_pipeline_inputs(arguments, args.pipeline_root)  # before the default model is fine-tuned
    arguments = with_default_model(arguments)
    if not arguments.get("mlflow_uri"):
        mlflow_dir = Path(args.pipeline_root).parent / "mlflow"
        arguments["mlflow_uri"] = local_mlflow(mlflow_dir, arguments.get("mlflow_experiment", "fastprune"))
    run = run_local(arguments, args.pipeline_root)
    r = run.registration
    alias = f"alias {r['alias']} -> version {r['version']}" if r["alias"] else "alias not moved"
    print(
        f"\nfastprune: registered {r['model_name']} version {r['version']} ({alias})\n  gate {r['gate']}: "
        f"{r['gate_reason']}\n  report: {run.artifact('register-model', 'registration') / 'report.md'}\n"
        f"  artifacts: {run.folder}"
    )
    if arguments["mlflow_uri"].startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {arguments['mlflow_uri']}")
    else:
        print(f"  MLflow: {r['tracking_uri']}")
    uri = f"models:/{r['model_name']}@{r['alias']}" if r["alias"] else r["model_uri"]
    print(f"  load: mlflow.pyfunc.load_model('{uri}')")
    return 0


def _add_step(p) -> None:
    from fastprune.common.stages.run import STAGES
    from fastprune.flags import add_fields

    stages = p.add_subparsers(dest="stage", required=True)
    for name, stage in STAGES.items():
        s = stages.add_parser(name, help=stage.doc, description=stage.doc)
        s.add_argument("--out", required=True, help="the folder this stage writes")
        _add_overwrite(s)
        for folder in stage.inputs + stage.optional:
            s.add_argument(f"--{folder}", required=folder in stage.inputs, help="a folder written by an earlier step")
        add_fields(s, stage.params)
        s.set_defaults(func=_step)


def _step(args) -> int:
    import json

    from fastprune.common.folders import check_output
    from fastprune.common.stages.run import STAGES, run_stage
    from fastprune.flags import values

    stage = STAGES[args.stage]
    check_output(args.out, args.overwrite)
    params = values(stage.params, args)
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
_COMMANDS.update(ONNX_COMMANDS)  # onnx (fastprune/onnx_cli.py)


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
    from fastprune.common.interrupts import Terminated, termination_raises

    try:
        apply_remote_timeouts()  # FASTPRUNE_REMOTE_TIMEOUT, before the parser imports MLflow or the hub client
    except FastpruneError as e:
        print(f"fastprune: error: {e}", file=sys.stderr)
        return 2
    from fastprune.flags import warn_deprecated

    args = build_parser(argv).parse_args(argv)
    warn_deprecated(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secure_logging()  # no credentials at any verbosity: third-party loggers stay at INFO, secrets redacted
    try:
        with termination_raises():  # SIGTERM/SIGHUP raise, so that scratch and staging folders are removed
            return args.func(args)
    except ValidationError as e:
        print(f"fastprune: error: {redact(_one_line(e))}", file=sys.stderr)
        return 2
    except FastpruneError as e:
        print(f"fastprune: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastprune: interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"fastprune: {e}; nothing half-written was left", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
