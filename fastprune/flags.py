"""Command-line flags generated from the pydantic parameter models: one flag per field (nested models
flattened; their field names are distinct), named after the field, with its type, its choices (a ``Literal``),
its description and default as help. Unset flags keep the model's default. The old names a model still accepts
(:meth:`~fastprune.common.stages.options.Options.renames`) are hidden flags that work, with a warning."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

DEPRECATED: dict[str, str] = {}
"""Old flag -> new flag, for the flags added so far (see :func:`warn_deprecated`)."""


def leaves(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo, tuple[str, ...]]]:
    """Every field of ``model``, the fields of nested models in place of those: (name, field, path to it)."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            for leaf, inner, path in leaves(field.annotation):
                yield leaf, inner, (name, *path)
        else:
            yield name, field, ()


def _kinds(annotation: Any) -> list[Any]:
    kinds = [annotation]
    for arg in get_args(annotation):
        kinds.extend(_kinds(arg) if get_origin(arg) is not Literal else [arg])
    return kinds


def _number_or(choices: tuple[str, ...]):
    def parse(text: str) -> float | str:
        if text in choices:
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number or one of {', '.join(choices)}, not {text!r}") from None

    return parse


def flag_options(field: FieldInfo) -> dict[str, Any]:
    """The ``add_argument`` keywords of a field (no default: an unset flag keeps the model's)."""
    kinds = _kinds(field.annotation)
    literal = next((k for k in kinds if get_origin(k) is Literal), None)
    kw: dict[str, Any] = {"default": None}
    if bool in kinds:
        kw["action"] = argparse.BooleanOptionalAction
    elif any(get_origin(k) is list for k in kinds):
        inner = next(get_args(k)[0] for k in kinds if get_origin(k) is list)
        kw.update(nargs="+", type=inner)
    elif literal is not None and float in kinds:
        kw.update(type=_number_or(get_args(literal)), metavar=f"NUMBER|{'|'.join(get_args(literal))}")
    elif literal is not None:
        kw["choices"] = get_args(literal)
    else:
        kw["type"] = next((k for k in (int, float, str) if k in kinds), str)
    return kw


def _help(field: FieldInfo, extra: str | None = None) -> str:
    parts = [field.description or ""]
    if not field.is_required() and field.default is not None:
        parts.append(f"default: {field.default!r}")
    if extra:
        parts.append(extra)
    return "; ".join(p for p in parts if p).replace("%", "%%")


def add_fields(
    parser,
    model: type[BaseModel],
    skip: tuple[str, ...] = (),
    notes: dict[str, str] | None = None,
    dest_prefix: str = "",
) -> list[str]:
    """One flag per field of ``model`` (see the module); returns the field names."""
    names = []
    renames = _renames(model)
    for name, field, _ in leaves(model):
        if name in skip:
            continue
        names.append(name)
        kw = flag_options(field)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=dest_prefix + name,
            required=field.is_required() and name not in renames.values(),  # or its old flag
            help=_help(field, (notes or {}).get(name)),
            **kw,
        )
    for old, new in renames.items():
        if new not in names or old in names:
            continue
        old_flag, new_flag = f"--{old.replace('_', '-')}", f"--{new.replace('_', '-')}"
        if old_flag in parser._option_string_actions:  # noqa: SLF001 - another field's flag already
            continue
        kw = flag_options(dict(leaves_by_name(model))[new])
        parser.add_argument(old_flag, dest=dest_prefix + new, help=argparse.SUPPRESS, **kw)
        DEPRECATED[old_flag] = new_flag
        if kw.get("action") is argparse.BooleanOptionalAction:
            DEPRECATED[f"--no-{old.replace('_', '-')}"] = f"--no-{new.replace('_', '-')}"
    return names


def leaves_by_name(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    for name, field, _ in leaves(model):
        yield name, field


def _renames(model: type[BaseModel]) -> dict[str, str]:
    found: dict[str, str] = {}
    renames = getattr(model, "renames", None)
    if renames is not None:
        found.update(renames())
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found.update(_renames(field.annotation))
    return found


def values(model: type[BaseModel], args: argparse.Namespace, dest_prefix: str = "") -> dict[str, Any]:
    """The flags that were given, nested as ``model`` nests its fields."""
    found: dict[str, Any] = {}
    for name, _, path in leaves(model):
        value = getattr(args, dest_prefix + name, None)
        if value is None:
            continue
        target = found
        for part in path:
            target = target.setdefault(part, {})
        target[name] = value
    return found


def warn_deprecated(argv: list[str]) -> None:
    """Say on stderr which deprecated flags ``argv`` uses (they still work)."""
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in DEPRECATED:
            print(f"fastprune: warning: {flag} is deprecated, use {DEPRECATED[flag]}", file=sys.stderr)


# ----- the README's table of options -------------------------------------------------------------------------------
TABLE_START, TABLE_END = "<!-- options table: python -m fastprune.flags -->", "<!-- end of the options table -->"


def _type_name(field: FieldInfo) -> str:
    literal = next((k for k in _kinds(field.annotation) if get_origin(k) is Literal), None)
    words = [" \\| ".join(f"`{a}`" for a in get_args(literal))] if literal is not None else []
    words += [k.__name__ for k in (int, float, bool) if k in _kinds(field.annotation)]
    if any(get_origin(k) is list for k in _kinds(field.annotation)):
        words.append("list")
    return " or ".join(words) or "text"


def options_table() -> str:
    """Markdown: every option of :mod:`fastprune.common.stages.options`, with its type, default, description and the
    surfaces that take it (``fastprune prune``, the stages of ``fastprune step``, the pipelines)."""
    from fastprune.common.stages import options
    from fastprune.common.stages.config import PruneConfig
    from fastprune.common.stages.run import STAGES
    from fastprune.pipelines.params import PruneRunParams, SweepRunParams

    mixins = [
        m
        for m in vars(options).values()
        if isinstance(m, type)
        and issubclass(m, options.Options)
        and m.__module__ == options.__name__
        and m is not options.Options
    ]
    rows, seen = [], set()
    for mixin in mixins:
        for name, field in mixin.model_fields.items():
            if name in seen or mixin.__name__ == "RunOptions":
                continue
            seen.add(name)
            where = [
                f"`{label}`"
                for label, model in (("prune", PruneConfig), ("run", PruneRunParams), ("sweep", SweepRunParams))
                if name in dict(leaves_by_name(model))
            ]
            where += [f"`step {s}`" for s, stage in STAGES.items() if name in stage.params.model_fields]
            default = "required" if field.is_required() else f"`{field.default}`"
            text = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{name}` | {_type_name(field)} | {default} | {', '.join(where)} | {text} |")
    head = ["| option (flag `--name-with-dashes`) | type | default | taken by | description |", "|---|---|---|---|---|"]
    return "\n".join([TABLE_START, *head, *rows, TABLE_END])


if __name__ == "__main__":
    print(options_table())
