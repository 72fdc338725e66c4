"""Operations commands of the ``fastprune`` command line: ``submit`` (a run or a recurring run on a Kubeflow
cluster), ``sweep`` (the budget sweep, here or on a cluster) and ``trigger`` (CI: prune every new version of a
registered model once). Registered in :mod:`fastprune.cli`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# ----- shared flags ----------------------------------------------------------------------------------------------


_EMBEDDED = ("model", "train_data", "dev_data")


def add_param_flags(parser: argparse.ArgumentParser, kinds: tuple[str, ...]) -> None:
    """``--params FILE`` and one flag per pipeline parameter (of every pipeline in ``kinds``), generated from the
    parameter models; flags override the file; unset ones keep the pipeline's default."""
    from fastprune.flags import add_fields
    from fastprune.pipelines.submit import pipeline_factory

    group = parser.add_argument_group("pipeline parameters (flags override --params; unset: the pipeline default)")
    group.add_argument("--params", metavar="FILE", help="YAML or JSON file of pipeline parameters")
    models = {kind: pipeline_factory(kind)[1] for kind in kinds}  # type: ignore[arg-type]
    seen: tuple[str, ...] = ()
    for kind, model in models.items():
        notes = {
            name: f"{kind} pipeline only"
            for name in model.model_fields
            if any(name not in other.model_fields for other in models.values())
        }
        notes.update({name: "with --local: the embedded SST-2 default" for name in _EMBEDDED})
        seen += tuple(add_fields(group, model, skip=seen, notes=notes, dest_prefix="param_"))


def pipeline_params(args, kind: str):
    """The validated parameters of pipeline ``kind``: the file's, with the flags on top."""
    from fastprune.pipelines.params import load_params, validate_params
    from fastprune.pipelines.submit import pipeline_factory

    model = pipeline_factory(kind)[1]  # type: ignore[arg-type]
    # every pipeline's flags that were given: one the pipeline does not take is refused by name
    flags = {k.removeprefix("param_"): v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    return load_params(args.params, model, flags) if args.params else validate_params(model, flags, "the flags")


def _add_cluster_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("Kubeflow Pipelines cluster (each falls back to the environment)")
    group.add_argument(
        "--host", required=required, help="KFP API endpoint (env KFP_HOST), e.g. https://kubeflow.example.com/pipeline"
    )
    group.add_argument("--namespace", help="user namespace of a multi-user installation (env KFP_NAMESPACE)")
    group.add_argument("--ui-host", help="address of the KFP UI for links (env KFP_UI_HOST; default: the host)")
    group.add_argument(
        "--token-file",
        help="file holding a bearer token (env KFP_TOKEN_FILE; or the token itself in "
        "KFP_TOKEN; never on the command line). Session cookies: env KFP_COOKIES",
    )
    group.add_argument("--ssl-ca-cert", help="CA bundle of the host's certificate (env KFP_SSL_CA_CERT)")
    group.add_argument("--no-verify-ssl", action="store_true", help="do not verify the host's certificate")


def _add_submit_flags(parser: argparse.ArgumentParser, one_run: bool = True) -> None:
    group = parser.add_argument_group("the pipeline version and the run")
    group.add_argument("--experiment", default="fastprune", help="KFP experiment (default: %(default)s)")
    if one_run:
        group.add_argument("--run-name", help="default: <pipeline>-<model name>")
    group.add_argument("--pipeline-name", help="the pipeline's name in KFP (default: fastprune or fastprune-sweep)")
    group.add_argument(
        "--version-name",
        help="pipeline version name (default: v<fastprune version>-<spec sha256>: "
        "an unchanged pipeline reuses its version)",
    )
    group.add_argument("--image", help="the image every step runs (default: the project image)")
    group.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    group.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    if one_run:
        group.add_argument(
            "--schedule",
            metavar="CRON",
            help="create a recurring run instead: a cron expression "
            "('minute hour day-of-month month day-of-week', e.g. '0 3 * * 1' = Mondays 03:00 UTC; "
            "6 fields with seconds first are kept; @daily, @weekly... work)",
        )
        group.add_argument("--max-concurrency", type=int, default=1, help="recurring: runs at once (default 1)")
        group.add_argument(
            "--catchup",
            action="store_true",
            help="recurring: backfill intervals missed while paused (default: only the latest)",
        )


def _cluster(args):
    from fastprune.pipelines.submit import ClusterConfig

    return ClusterConfig.from_env(
        args.host,
        args.namespace,
        args.ui_host,
        args.token_file,
        args.ssl_ca_cert,
        False if args.no_verify_ssl else None,
    )


def _options(args, kind: str):
    from fastprune.pipelines.submit import SubmitOptions

    return SubmitOptions(
        pipeline=kind,
        pipeline_name=args.pipeline_name,
        version_name=args.version_name,
        experiment=args.experiment,
        run_name=getattr(args, "run_name", None),
        image=args.image,
        schedule=getattr(args, "schedule", None),
        max_concurrency=getattr(args, "max_concurrency", 1),
        catchup=getattr(args, "catchup", False),
        enable_caching=False if args.no_cache else None,
        service_account=args.service_account,
    )


def _print_submitted(submitted) -> None:
    v = submitted.pipeline
    state = "uploaded" if v.uploaded else "unchanged, reused"
    print(f"fastprune: pipeline {v.pipeline_name} version {v.name} ({state})")
    if submitted.kind == "run":
        print(f"fastprune: started run {submitted.name} (id {submitted.id})")
    else:
        print(
            f"fastprune: created recurring run {submitted.name} (id {submitted.id}), cron '{submitted.cron}' "
            "(seconds minute hour day-of-month month day-of-week)"
        )
    print(f"  {submitted.url}")


def submit_now(host: str, arguments: dict, kind: str = "prune") -> int:
    """Start one run of pipeline ``kind`` on the cluster at ``host`` (auth from the environment); print its link.
    What ``fastprune run --host`` and ``fastprune sweep --host`` do."""
    from fastprune.pipelines.params import validate_params
    from fastprune.pipelines.submit import ClusterConfig, SubmitOptions, pipeline_factory, submit

    params = validate_params(pipeline_factory(kind)[1], arguments)  # type: ignore[arg-type]
    _print_submitted(submit(ClusterConfig.from_env(host), params, SubmitOptions(pipeline=kind)))
    return 0


# ----- fastprune submit ------------------------------------------------------------------------------------------
def _add_submit(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Upload the compiled pipeline to a Kubeflow Pipelines cluster (a new pipeline version when it "
        "changed) and start a run, or create a recurring run with --schedule. Prints the UI link."
    )
    p.add_argument("--pipeline", choices=["prune", "sweep"], default="prune", help="default: %(default)s")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the parameters and the cron expression, compile, "
        "and print what would be sent, without contacting the cluster",
    )
    _add_cluster_flags(p)
    _add_submit_flags(p)
    add_param_flags(p, ("prune", "sweep"))
    p.set_defaults(func=_submit)


def _submit(args) -> int:
    import json
    import tempfile

    from fastprune.common.ops.remote import redact
    from fastprune.pipelines.submit import compile_package, kfp_cron, spec_version_name, submit

    params = pipeline_params(args, args.pipeline)
    if args.dry_run:
        cron = kfp_cron(args.schedule) if args.schedule else None
        with tempfile.TemporaryDirectory() as tmp:
            version = args.version_name or spec_version_name(
                compile_package(args.pipeline, Path(tmp) / "p.yaml", args.image)
            )
        what = f"a recurring run, cron '{cron}'" if cron else "a run"
        print(
            f"fastprune: would create {what} of pipeline {args.pipeline} version {version} in experiment "
            f"{args.experiment} with\n{redact(json.dumps(params.arguments(), indent=2))}"
        )
        return 0
    _print_submitted(submit(_cluster(args), params, _options(args, args.pipeline)))
    return 0


# ----- fastprune sweep -----------------------------------------------------------------------------------------
def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The budget sweep: Fisher once, then prune, evaluate and profile at every constraint; register "
        "only the smallest (or fastest) model that passes the accuracy gate; a Pareto plot shows them "
        "all. Without --model, --local sweeps the embedded default (MiniLM on the bundled SST-2 data) "
        "into a local MLflow under runs/. For a recurring sweep: fastprune submit --pipeline sweep."
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run every step here with kfp.local")
    where.add_argument("--host", help="start a run on the Kubeflow Pipelines server at this URL (auth: environment)")
    p.add_argument("--pipeline-root", default="runs/sweep", help="local artifacts (default: %(default)s)")
    add_param_flags(p, ("sweep",))
    p.set_defaults(func=_sweep)


def _local_defaults(arguments: dict, pipeline_root: str) -> dict:
    """The embedded default model and data when no model is given, and a local MLflow when none is named."""
    from fastprune.defaults import with_default_model
    from fastprune.pipelines.local import local_mlflow

    arguments = with_default_model(arguments)
    if not arguments.get("mlflow_uri"):
        arguments["mlflow_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or local_mlflow(
            Path(pipeline_root).parent / "mlflow", arguments.get("mlflow_experiment", "fastprune")
        )
    return arguments


def _sweep(args) -> int:
    from fastprune.common.folders import stage_info
    from fastprune.pipelines.local import run_local

    params = pipeline_params(args, "sweep")
    if args.host:
        return submit_now(args.host, params.arguments(), "sweep")
    from fastprune.common.stages.preflight import check_pipeline_inputs

    check_pipeline_inputs(params.arguments(), args.pipeline_root)  # before the default model is fine-tuned
    run = run_local(_local_defaults(params.arguments(), args.pipeline_root), args.pipeline_root, "sweep")
    sweep = run.artifact("select-candidate", "sweep")
    print("\n" + format_sweep(stage_info(sweep)))
    r = run.registration
    if r:
        alias = f"alias {r['alias']} -> version {r['version']}" if r["alias"] else "alias not moved"
        print(
            f"fastprune: registered {r['model_name']} version {r['version']} ({alias})\n"
            f"  report: {run.artifact('register-model', 'registration') / 'report.html'}"
        )
    print(f"  Pareto plot: {sweep / 'sweep.html'}\n  artifacts: {run.folder}")
    return 0


def format_sweep(info: dict) -> str:
    """The sweep's candidates and choice, as a few lines for a terminal."""
    lines = [f"{'budget':>8} {'FLOPs':>6} {'params':>8} {'latency':>9} {'metric':>7} {'gate':>6}"]
    for c in info["candidates"]:
        latency = "–" if c["latency_after_ms"] is None else f"{c['latency_after_ms']:.2f}ms"
        mark = "  <- registered" if c["index"] == info["chosen"] else ""
        lines.append(
            f"{c['label']:>8} {c['flops_ratio']:6.3f} {c['params_after'] / c['params_before']:8.1%} "
            f"{latency:>9} {c['metric_after']:7.2f} {'passed' if c['passed'] else 'failed':>6}{mark}"
        )
    head = (
        f"fastprune: sweep of {info['num_candidates']} budgets, {info['num_passed']} passed the gate; objective "
        f"{info['params']['objective']}: "
        + (f"registered C={info['chosen_constraint']:g}" if info["registered"] else "nothing registered")
    )
    return "\n".join([head, *lines])


# ----- fastprune trigger -----------------------------------------------------------------------------------------
def _add_trigger(p: argparse.ArgumentParser) -> None:
    p.description = (
        "For CI: prune every version of a registered MLflow model that has not been pruned yet, one "
        "pipeline run per version (model=models:/NAME/VERSION), on a cluster (--host) or here (--local). "
        "Each source version is tagged fastprune.status / fastprune.run_id, and fastprune.pruned_run "
        "once pruned: a second trigger prunes nothing twice, and a failed run is retried next time "
        "(up to --max-attempts). The pruned models are registered as NAME-pruned unless "
        "--registered-model-name says otherwise."
    )
    source = p.add_argument_group("the source model")
    source.add_argument("--registered-model", required=True, help="the registered MLflow model to watch")
    which = source.add_mutually_exclusive_group()
    which.add_argument("--source-alias", help="only the version behind this alias of it (e.g. champion)")
    which.add_argument("--source-stage", help="only its versions in this (legacy) stage: Staging, Production, ...")
    source.add_argument(
        "--tracking-uri",
        help="the MLflow the trigger reads and tags (default: "
        "MLFLOW_TRACKING_URI, else --mlflow-uri); the runs use --mlflow-uri, default the same",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run each pipeline here with kfp.local, one by one")
    where.add_argument("--host", help="start the runs on this Kubeflow Pipelines server (env KFP_HOST)")
    p.add_argument("--pipeline", choices=["prune", "sweep"], default="prune", help="default: %(default)s")
    p.add_argument("--pipeline-root", default="runs/trigger", help="--local artifacts (default: %(default)s)")
    p.add_argument("--max-attempts", type=int, default=3, help="give up on a version after this many failed runs")
    p.add_argument(
        "--stale-after-hours",
        type=float,
        default=24.0,
        help="retry a version whose run nobody heard of for this long (default: %(default)s)",
    )
    p.add_argument("--limit", type=int, help="start at most this many runs per trigger")
    p.add_argument("--dry-run", action="store_true", help="say what would be pruned; change nothing")
    cluster = p.add_argument_group("Kubeflow Pipelines cluster (with --host; each falls back to the environment)")
    cluster.add_argument("--namespace")
    cluster.add_argument("--ui-host")
    cluster.add_argument("--token-file", help="bearer token file (or the token in KFP_TOKEN)")
    cluster.add_argument("--ssl-ca-cert")
    cluster.add_argument("--no-verify-ssl", action="store_true")
    _add_submit_flags(p, one_run=False)
    add_param_flags(p, ("prune", "sweep"))
    p.set_defaults(func=_trigger)


def _trigger(args) -> int:
    from datetime import timedelta

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from fastprune.common.ops.registry import check_tracking_uri, mlflow_error, redacted
    from fastprune.common.ops.trigger import summary, trigger
    from fastprune.pipelines.launchers import ClusterLauncher, LocalLauncher

    params = pipeline_params(args, args.pipeline)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow_uri
    if not tracking_uri:
        from fastprune.common.errors import ConfigError

        raise ConfigError("which MLflow holds the source model? Set MLFLOW_TRACKING_URI or pass --tracking-uri")
    check_tracking_uri(tracking_uri)  # answers, and accepts the credentials, before anything else
    given = params.model_fields_set
    target = params.registered_model_name if "registered_model_name" in given else f"{args.registered_model}-pruned"
    params = type(params).model_validate(
        {**params.arguments(), "registered_model_name": target, "mlflow_uri": params.mlflow_uri or tracking_uri}
    )
    if args.local:
        from fastprune.common.stages.preflight import check_pipeline_inputs

        check_pipeline_inputs(params.arguments(), args.pipeline_root)
        launcher: LocalLauncher | ClusterLauncher = LocalLauncher(args.pipeline, args.pipeline_root)
    else:
        launcher = ClusterLauncher(_cluster(args), _options(args, args.pipeline))
    print(
        f"fastprune: versions of {args.registered_model} in MLflow at {redacted(tracking_uri)} "
        f"-> {target}, {launcher.where}" + (" (dry run)" if args.dry_run else "")
    )

    def show(o) -> None:
        link = f"  {o.url}" if o.url else ""
        print(f"  version {o.version.version:>4}  {o.action:<11} {o.reason}{link}", flush=True)

    try:
        outcomes = trigger(
            MlflowClient(tracking_uri),
            args.registered_model,
            launcher,
            params.arguments(),
            alias=args.source_alias,
            stage=args.source_stage,
            max_attempts=args.max_attempts,
            stale_after=timedelta(hours=args.stale_after_hours),
            limit=args.limit,
            dry_run=args.dry_run,
            report=show,
        )
    except MlflowException as e:
        raise mlflow_error(e, redacted(tracking_uri), f"reading the versions of {args.registered_model}") from None
    print(f"fastprune: {summary(outcomes)}")
    return 1 if any(o.action == "failed" for o in outcomes) else 0


COMMANDS = {
    "submit": (_add_submit, "upload the pipeline to a Kubeflow cluster and start a run or a recurring run"),
    "sweep": (_add_sweep, "budget sweep: prune at several constraints, register the smallest/fastest that passes"),
    "trigger": (_add_trigger, "CI: prune every not-yet-pruned version of a registered MLflow model, once"),
}
