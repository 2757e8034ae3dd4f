"""One definition of a workload's parameters: the model, the flow's signature and the paths.

Each workload's params model (a :class:`FlowParams`) holds every rule of its parameters. The
flow's signature is generated from it (:func:`signature_from`), so the deployment's parameter
schema carries the same descriptions, ranges, patterns and enums, and Prefect refuses what the
schema can express before a run exists. A flow builds its model in one line,
:meth:`FlowParams.from_call`. What a schema cannot express (end before start, rules across
parameters) fails in :meth:`FlowParams.parse` with one :class:`BadInput` line per parameter,
``parameter NAME: why``, the format of every workload's parameter errors (:func:`problem` in a
validator, :func:`bad_parameter` in a flow).

Relative paths resolve under one data root (:func:`data_root`) and may not climb out of it.
No prefect at import: the models are shared by flows, benchmarks and tests.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from headroom.errors import BadInput

PROJECT_DIR = Path(__file__).resolve().parents[2]
DATA_ROOT_ENV = "HEADROOM_DATA_ROOT"
DATA_ROOT_BLOCK = "data-root"
"""An output-storage block of this name with a local ``path`` is the data root."""

SIZE_PATTERN = r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"
DURATION_PATTERN = r"^\d+(\.\d+)?\s*(ms|s|sec|m|min|h|d)?$"

Model = TypeVar("Model", bound="FlowParams")
_VALUE_ERROR = "Value error, "


def _line(parameter: str, message: str) -> str:
    return f"parameter {parameter}: {message}"


def problem(parameter: str, message: str) -> ValueError:
    """The error a validator raises: it names the parameter whatever pydantic's location."""
    return ValueError(_line(parameter, message))


def bad_parameter(parameter: str, message: str) -> BadInput:
    """The error a flow raises for a parameter found wrong after validation (a dataset that
    lists no files, an output holding another dataset): the same line as :meth:`parse`'s."""
    return BadInput(_line(parameter, message))


class FlowParams(BaseModel):
    """Base of every workload's parameters; :meth:`parse` is the one way flows build them."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_call(cls: type[Model], arguments: Mapping[str, Any]) -> Model:
        """The model of a flow call, the flow's first line: ``Params.from_call(locals())``.

        Takes the arguments the model defines (a flow's ``max_workers`` and ``chunk_scale`` may
        be headroom's, not the model's) and parses them with relative paths under
        :func:`data_root`.
        """
        own = {name: value for name, value in arguments.items() if name in cls.model_fields}
        return cls.parse(data_root=data_root(), **own)

    @classmethod
    def parse(cls: type[Model], *, data_root: Path | None = None, **values: Any) -> Model:
        """Validate ``values``; relative paths resolve under ``data_root`` (default: the root
        from the environment, else the project directory). Raises BadInput naming each
        parameter, never pydantic's report."""
        root = Path(data_root) if data_root is not None else default_data_root()
        try:
            return cls.model_validate(values, context={"data_root": root})
        except ValidationError as exc:
            raise BadInput("; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: Any) -> str:
    message = str(error["msg"]).removeprefix(_VALUE_ERROR)
    if message.startswith("parameter "):
        return message
    return _line(".".join(str(part) for part in error["loc"]) or "parameters", message)


# ---------------------------------------------------------------------------------------------
# Paths


def default_data_root() -> Path:
    """``$HEADROOM_DATA_ROOT``, else the project directory (no Prefect API call)."""
    configured = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(configured).expanduser().resolve() if configured else PROJECT_DIR


def data_root() -> Path:
    """The root of relative paths: ``$HEADROOM_DATA_ROOT``, else the local path of the
    output-storage block named ``data-root``, else the project directory."""
    if os.environ.get(DATA_ROOT_ENV, "").strip():
        return default_data_root()
    try:
        from headroom.prefect.blocks import OutputStorage

        block = OutputStorage.load(DATA_ROOT_BLOCK)
    except Exception:  # no such block (or no API to ask): the default root
        return PROJECT_DIR
    if block.bucket or not block.path:
        return PROJECT_DIR  # an object store cannot hold local inputs; relative paths stay local
    return Path(block.path).expanduser().resolve()


def is_url(value: str) -> bool:
    """True for ``scheme://...`` (s3, http, redis, file): not a path under the data root."""
    return "://" in value


def under_root(value: str, info: ValidationInfo) -> str:
    """A path parameter's value: absolute paths and URLs as given, a relative path under the
    data root; a relative path that climbs out of the root is refused, naming the parameter."""
    name = info.field_name or "path"
    text = value.strip()
    if not text or is_url(text) or os.path.isabs(os.path.expanduser(text)):
        return os.path.expanduser(text) if text.startswith("~") else value
    root = (info.context or {}).get("data_root") or default_data_root()
    resolved = os.path.normpath(os.path.join(root, text))
    if os.path.commonpath([resolved, str(root)]) != str(root):
        raise problem(name, f"{value!r} climbs out of the data root {root}; give an absolute path")
    return resolved


def checks_inputs(info: ValidationInfo) -> bool:
    """True under :meth:`FlowParams.parse`, the flow's entry: inputs must exist then. A model
    built directly (a window spec in a test, a benchmark's plan) checks the rules only."""
    return bool(info.context and "data_root" in info.context)


def existing_dir(value: str, info: ValidationInfo) -> str:
    """``value`` when it is a directory or a URL (or inputs are not checked), else refused."""
    if checks_inputs(info) and not is_url(value) and not os.path.isdir(value):
        raise problem(info.field_name or "path", f"{value!r} is not an existing directory")
    return value


# ---------------------------------------------------------------------------------------------
# The flow's signature


def signature_from(model: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a flow function the model's rules: each parameter the model defines gets the
    field's type and constraints; every parameter gets its description in the docstring's
    ``Args:`` section, where Prefect's parameter schema reads it.

    Apply below ``@flow``. A signature default that differs from the model's, or a parameter
    without a description, fails at import.
    """

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        parameters, docs = [], []
        for param in signature.parameters.values():
            field = model.model_fields.get(param.name)
            annotation = param.annotation
            description = _annotated_description(annotation)
            if field is not None:
                _check_default(fn, param, field)
                annotation = (
                    Annotated[(field.annotation, *field.metadata)]  # type: ignore[valid-type]
                    if field.metadata
                    else field.annotation
                )
                description = field.description or description
            if not description:
                raise TypeError(f"{fn.__name__}: parameter {param.name} has no description")
            parameters.append(param.replace(annotation=annotation))
            docs.append(f"    {param.name}: {description}")
        fn.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in parameters} | {
            "return": signature.return_annotation
        }
        fn.__doc__ = (inspect.getdoc(fn) or "").rstrip() + "\n\nArgs:\n" + "\n".join(docs)
        return fn

    return apply


def _annotated_description(annotation: Any) -> str | None:
    if get_origin(annotation) is Annotated:
        for extra in get_args(annotation)[1:]:
            if isinstance(extra, FieldInfo) and extra.description:
                return extra.description
    return None


def _check_default(fn: Callable[..., Any], param: inspect.Parameter, field: FieldInfo) -> None:
    if field.default is PydanticUndefined or field.default_factory is not None:
        return
    default = None if param.default is inspect.Parameter.empty else param.default
    if default != field.default:
        raise TypeError(
            f"{fn.__name__}: default of {param.name} is {default!r}, the model's {field.default!r}"
        )


def literal_of(values: tuple[str, ...]) -> Any:
    """``Literal[values...]`` from a runtime tuple (a closed set shown as an enum)."""
    return Literal[values]  # type: ignore[valid-type]
