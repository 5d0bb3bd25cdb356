"""What the settings models share: strict frozen pydantic models, and their fields as flags.

One schema: trainers and evaluators own their settings models, a sweep file's sections compose
them, and a standalone CLI's flags are those models' fields (`--kebab-case` of the key, its type,
default and description), so the sweep file and the CLI take the same fields.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class Strict(BaseModel):
    """Unknown keys are errors; values are frozen (hashable, and picklable to Ray workers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def fields_of(model: type[BaseModel], value: BaseModel) -> dict[str, Any]:
    """The values in `value` of the fields that `model` declares (a sweep section's share)."""
    return {name: getattr(value, name) for name in model.model_fields}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    names: typing.Iterable[str] | None = None,
    also: dict[str, str] | None = None,
) -> None:
    """One flag per field of `model` (or those in `names`): `--kebab-case` of the field's name
    (`also`: a second spelling), its type, default and description as the help. A Literal gives
    the choices; a bool is a switch away from its default (`--no-<name>` when that is True)."""
    also = also or {}
    for name in model.model_fields if names is None else names:
        field = model.model_fields[name]
        kind = _flag_type(field.annotation)
        help_text = (field.description or "").replace("%", "%%")
        if kind is bool:
            switch = "--no-" + name.replace("_", "-") if field.default else flag(name)
            action = "store_false" if field.default else "store_true"
            options = [switch, *filter(None, [also.get(name)])]
            parser.add_argument(*options, dest=name, action=action, help=help_text)
            continue
        choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
        parser.add_argument(
            flag(name),
            *filter(None, [also.get(name)]),
            dest=name,
            type=type(choices[0]) if choices else kind,
            choices=choices,
            required=field.is_required(),
            default=None if field.is_required() else field.default,
            help=help_text,
        )


def from_args(model: type[BaseModel], args: argparse.Namespace, **values: Any) -> Any:
    """`model` from `values` and the parsed flags of its other fields; a value that does not fit
    is a one-line ValueError naming its flag and the rule."""
    given = {k: v for k, v in vars(args).items() if k in model.model_fields and k not in values}
    try:
        return model(**given, **values)
    except ValidationError as err:
        problems = [
            f"{flag(str(e['loc'][0]))} {e.get('input')!r}: {e['msg']}" for e in err.errors()
        ]
        raise ValueError("; ".join(problems)) from None


def _flag_type(annotation: Any) -> Any:
    """The type a flag parses: `int` for `int`, `int | None` and `Annotated[int, ...]`; a Literal
    as itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation
