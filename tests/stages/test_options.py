"""One declaration per option: the components' literal signatures, both pipelines' parameters and the command
lines all follow the pydantic fields of :mod:`fastprune.common.stages.options` (name, type, default), every
component documents each argument, and the old names still work, with a warning."""

import argparse
import importlib
import inspect
import warnings
from typing import Literal, get_args, get_origin

import pytest
import yaml
from fastprune.common.stages.config import PruneConfig, SearchParams, TuneParams
from fastprune.common.stages.options import RENAMED, Objective, RunOptions
from fastprune.common.stages.run import STAGES
from fastprune.components.runtime import STAGE_NAMES
from fastprune.pipelines.params import PruneRunParams, SweepRunParams, kfp_annotation, load_params
from fastprune.pipelines.submit import pipeline_factory

from fastprune.cli import build_parser, main
from fastprune.flags import leaves

COMPONENTS = {  # module: (component, stage)
    "prepare": ("fetch_model", "prepare"),
    "sample": ("sample_data", "sample"),
    "fisher": ("compute_fisher", "fisher"),
    "search": ("search_masks", "search"),
    "rearrange": ("rearrange_masks", "rearrange"),
    "tune": ("tune_masks", "tune"),
    "export": ("export_model", "export"),
    "evaluate": ("evaluate_models", "evaluate"),
    "profile": ("profile_latency", "profile"),
    "register": ("register_model", "register"),
    "select": ("select_candidate", None),
}
NOT_IN_COMPONENTS = {  # stage options a pipeline step does not take (its default is the pipeline's behaviour)
    "progress",
    "text_columns",
    "label_column",
    "seq_len",
    "replace",
    "holdout",
}


def _component(module: str):
    return getattr(importlib.import_module(f"fastprune.components.{module}"), COMPONENTS[module][0])


def _parameters(module: str) -> dict[str, inspect.Parameter]:
    """The component's parameters that are not artifacts."""
    signature = inspect.signature(_component(module).python_func)
    return {name: p for name, p in signature.parameters.items() if p.annotation in (str, int, float, bool, list, dict)}


def _declaration(stage: str | None, name: str):
    if stage is not None:
        field = STAGES[stage].params.model_fields.get(STAGE_NAMES.get(name, name))
        if field is not None:
            return field
    for model in (RunOptions, Objective):
        if name in model.model_fields:
            return model.model_fields[name]
    return None


@pytest.mark.parametrize("module", COMPONENTS)
def test_component_signatures_follow_the_declarations(module):
    """A component parameter missing, named, typed or defaulted otherwise than its option fails here."""
    stage = COMPONENTS[module][1]
    parameters = _parameters(module)
    for name, parameter in parameters.items():
        field = _declaration(stage, name)
        assert field is not None, f"{module}: parameter {name!r} is no option of stage {stage} nor a run parameter"
        assert parameter.annotation is kfp_annotation(field), f"{module}: {name} has another type"
        if parameter.default is not inspect.Parameter.empty:
            expected = "" if field.default is None else field.default  # "" : a string left unset
            assert parameter.default == expected, f"{module}: {name} defaults to {parameter.default!r}"
    if stage is not None:
        taken = {STAGE_NAMES.get(name, name) for name in parameters}
        missing = set(STAGES[stage].params.model_fields) - taken - NOT_IN_COMPONENTS
        assert not missing, f"{module}: the component does not take the options {sorted(missing)}"


@pytest.mark.parametrize("module", COMPONENTS)
def test_every_component_argument_is_documented(module):
    component = _component(module)
    doc = component.python_func.__doc__
    assert "\nArgs:\n" in doc
    documented = {line.strip().split(":")[0] for line in doc.split("\nArgs:\n")[1].splitlines() if line.strip()}
    assert documented == set(inspect.signature(component.python_func).parameters)
    spec = component.component_spec
    for name, spec_input in (spec.inputs or {}).items():  # what the Kubeflow UI shows (outputs: only in Args)
        assert spec_input.description, f"{module}: {name} has no description in the compiled component"


def test_no_component_takes_an_empty_string_for_a_method_default():
    for module in COMPONENTS:
        for name, parameter in _parameters(module).items():
            if parameter.default == "":
                assert _declaration(COMPONENTS[module][1], name).default in (None, ""), (module, name)


@pytest.mark.parametrize("kind", ["prune", "sweep"])
def test_pipeline_parameters_are_the_declared_fields_and_reach_steps_under_the_same_name(kind, tmp_path):
    build, model, _ = pipeline_factory(kind)
    compiled = build().pipeline_spec
    from google.protobuf.json_format import MessageToDict

    spec = MessageToDict(compiled)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert list(inputs) == sorted(model.model_fields) or set(inputs) == set(model.model_fields)
    for name, field in model.model_fields.items():
        assert inputs[name]["description"] == field.description
        kind_of = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", list: "LIST"}
        assert inputs[name]["parameterType"] == kind_of[kfp_annotation(field)], name
        default = inputs[name]["defaultValue"]
        assert default == field.default or (isinstance(default, float) and default == field.default), name

    used: set[str] = set()

    def walk(tasks: dict) -> None:
        for task_name, task in tasks.items():
            for param, value in task.get("inputs", {}).get("parameters", {}).items():
                source = value.get("componentInputParameter", "").removeprefix("pipelinechannel--")
                if source in model.model_fields:
                    used.add(source)
                    taken = param.removeprefix("pipelinechannel--")  # a sub-DAG's input (loop, condition)
                    assert taken == source, f"{task_name} takes pipeline parameter {source} as {param}"

    walk(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        walk(component.get("dag", {}).get("tasks", {}))
    platform_only = {"s3_secret", "accelerator_type", "gpu_limit"}  # the secret and resources of the steps
    assert set(model.model_fields) - used <= platform_only | {"constraints"}


def test_the_two_pipelines_share_their_parameters():
    shared = set(PruneRunParams.model_fields) & set(SweepRunParams.model_fields)
    assert set(PruneRunParams.model_fields) - shared == {"constraint", "fisher_steps"}
    assert set(SweepRunParams.model_fields) - shared == {"constraints", "objective"}
    for name in shared:
        a, b = PruneRunParams.model_fields[name], SweepRunParams.model_fields[name]
        assert (a.annotation, a.default, a.description) == (b.annotation, b.default, b.description), name


def _flags(argv: list[str]) -> dict[str, argparse.Action]:
    parser = build_parser(argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices[argv[0]]
    if argv[0] == "step":
        command = next(a for a in command._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[1]]
    return {a.dest.removeprefix("param_"): a for a in command._actions if a.help != argparse.SUPPRESS}


def _check_flag(action: argparse.Action, field) -> None:
    literal = next((a for a in [field.annotation, *get_args(field.annotation)] if get_origin(a) is Literal), None)
    if literal is not None and float not in get_args(field.annotation):
        assert tuple(action.choices) == get_args(literal)
    assert action.default is None, "unset flags keep the model's default"
    assert field.description and field.description.replace("%", "%%")[:30] in action.help


@pytest.mark.parametrize(
    "argv, model",
    [
        (["prune"], PruneConfig),
        (["run"], PruneRunParams),
        (["sweep"], SweepRunParams),
        *[(["step", name], stage.params) for name, stage in STAGES.items()],
    ],
)
def test_every_command_has_a_flag_per_option(argv, model):
    flags = _flags(argv)
    for name, field, _ in leaves(model):
        if name == "progress" and model is PruneConfig:
            continue
        assert name in flags, f"{' '.join(argv)} has no flag --{name.replace('_', '-')}"
        assert flags[name].option_strings[0] == f"--{name.replace('_', '-')}", "the flag has the option's name"
        _check_flag(flags[name], field)


def test_old_flags_still_work_with_a_warning(capsys):
    argv = [
        "prune",
        "--model",
        "m",
        "--task",
        "sst2",
        "--train-file",
        "t",
        "--metric",
        "latency",
        "--latency-dtype",
        "float16",
        "--teacher",
        "dense",
        "--no-tuning",
        "--output",
        "o",
    ]
    args = build_parser(argv).parse_args(argv)
    assert (args.train_data, args.constraint_metric, args.serving_dtype, args.tuning_teacher, args.tune) == (
        "t",
        "latency",
        "float16",
        "dense",
        False,
    )
    step = ["step", "search", "--model", "m", "--grads", "g", "--out", "o", "--metric", "latency"]
    assert build_parser(step).parse_args(step).constraint_metric == "latency"
    assert (
        main(
            [
                "step",
                "profile",
                "--model",
                "/nonexistent",
                "--pruned",
                "/nonexistent",
                "--out",
                "o",
                "--dtype",
                "float32",
                "--batch-size",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--dtype is deprecated, use --serving-dtype" in err and "--batch-size is deprecated" in err


def test_old_parameter_names_are_accepted_with_a_warning(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"search_allocation": "block", "constraint": 0.5}))
    with pytest.warns(FutureWarning, match="'search_allocation' is deprecated, use 'allocation'"):
        params = load_params(path, pipeline_factory("prune")[1])
    assert params.arguments() == {"allocation": "block", "constraint": 0.5}
    with pytest.warns(FutureWarning, match="'mode' is deprecated"):
        assert TuneParams(mode="scales", teacher="dense").tuning_mode == "scales"
    with pytest.raises(ValueError, match="old name of 'constraint_metric'"):
        SearchParams(metric="flops", constraint_metric="flops")
    assert set(RENAMED.values()) <= {n for m in (PruneConfig, PruneRunParams) for n, _, _ in leaves(m)}


def test_a_ridge_travels_as_a_string_and_is_read_as_a_number():
    params = PruneRunParams(tuning_ridge=0.01)
    assert params.arguments() == {"tuning_ridge": "0.01"}
    assert TuneParams(tuning_ridge="0.01").ridge() == 0.01
    assert TuneParams().ridge() is None and TuneParams(tuning_ridge="auto").ridge() == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PruneRunParams(tuning_ridge="auto", allocation="block")


def test_the_readme_table_of_options_is_current():
    from pathlib import Path

    from fastprune.flags import options_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert options_table() in readme, "regenerate it: python -m fastprune.flags"


def test_auto_allocation_without_a_held_out_part_is_refused_on_every_surface():
    """Refused where the parameters are validated (pydantic wraps the error), before any stage runs."""
    base = {"model": "m", "train_data": "t", "task": "sst2", "allocation": "auto"}
    with pytest.raises(ValueError, match="allocation 'auto'.*holdout is 0.*--holdout 0.2"):
        PruneConfig(**base)
    with pytest.raises(ValueError, match="allocation 'auto'.*holdout is 0"):
        PruneRunParams(**base)
    assert PruneConfig(**base, sample={"holdout": 0.2}).allocation == "auto"
    assert PruneRunParams(**base, holdout=0.2).holdout == 0.2
