"""Settings and the environment: ``MESH_`` variable names, and errors that name the variable behind a value.

Every field has a variable: ``MESH_`` + the path to it, parts joined with ``__``, in any case
(``MESH_RETRY__MAX_RETRIES``). A ``MESH_`` variable that names no setting is an error, and a validation error
names the variable that set the bad value (when it did not come from code).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "reject_unknown_env",
    "relocate",
    "undecodable_env",
    "with_env_names",
]

ENV_PREFIX = "MESH_"
ENV_NESTED_DELIMITER = "__"


def _env_names(loc: tuple[Any, ...]) -> list[str]:
    """The ``MESH_...`` variables that set the value at ``loc`` (or, for a whole section, its fields)."""
    environ = {k.upper(): k for k in os.environ}
    for end in range(len(loc), 0, -1):
        candidate = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in loc[:end]).upper()
        if candidate in environ:
            return [environ[candidate]]
    if loc:
        section = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in loc).upper() + ENV_NESTED_DELIMITER
        return sorted(original for upper, original in environ.items() if upper.startswith(section))
    return []


def _given_in_code(values: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether the value at ``loc`` came from the constructor's arguments (which win over variables)."""
    node: Any = values
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, BaseModel) and part in node.model_fields_set:
            node = getattr(node, part)
        else:
            return False
    return True


def with_env_names(exc: ValidationError, values: Mapping[str, Any]) -> ValidationError:
    """``exc`` with each message followed by ``(set by MESH_...=value)`` where a variable, not the
    constructor's ``values``, gave the value at fault."""
    details: list[InitErrorDetails] = []
    for err in exc.errors():
        message = err["msg"]
        names = [] if _given_in_code(values, err["loc"]) else _env_names(err["loc"])
        if names:
            message += " (set by " + ", ".join(f"{name}={os.environ[name]!r}" for name in names) + ")"
        details.append(_detail(err, message, err["loc"]))
    return ValidationError.from_exception_data(exc.title, details)


def relocate(exc: ValidationError, prefix: tuple[str, ...]) -> ValidationError:
    """``exc`` with ``prefix`` put before every error's location (``("services", name, section)``)."""
    details = [_detail(err, err["msg"], (*prefix, *err["loc"])) for err in exc.errors()]
    return ValidationError.from_exception_data("MeshSettings", details)


def _detail(err: Any, message: str, loc: tuple[Any, ...]) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(err["type"], "{message}", {"message": message}),
        loc=loc,
        input=err.get("input"),
    )


def _mesh_variables() -> list[tuple[str, list[str]]]:
    """Each ``MESH_`` variable with the setting path it names (upper case, split at ``__``)."""
    return [
        (key, key.upper()[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER))
        for key in os.environ
        if key.upper().startswith(ENV_PREFIX)
    ]


def _target(annotation: Any) -> Any:
    """What a field holds, without ``Optional`` and ``Annotated``: a model class, ``dict``, ``list`` or a
    scalar type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return origin or annotation


def _resolve(root: type[BaseModel], path: list[str]) -> tuple[bool, Any]:
    """Whether ``path`` names a setting, and what that setting holds. Keys below a free-form map (a
    service name under ``services``, say) are taken as given."""
    holder: Any = root
    for i, part in enumerate(path):
        if holder is dict:
            return True, dict
        if not (isinstance(holder, type) and issubclass(holder, BaseModel)):
            return False, None
        fields = {name.upper(): info for name, info in holder.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return False, None
        holder = _target(info.annotation)
        if i == len(path) - 1:
            return True, holder
    return False, None


def reject_unknown_env(root: type[BaseModel]) -> None:
    """A ``MESH_`` variable that names no setting is a typo; say so instead of ignoring it."""
    for key, path in _mesh_variables():
        known, _ = _resolve(root, path)
        if not known:
            top = sorted(name for name in root.model_fields)
            raise ValueError(
                f"unknown setting in environment variable {key}: "
                f"{'.'.join(p.lower() for p in path)!r} names no setting (top-level settings: {', '.join(top)})"
            )


def undecodable_env(exc: Exception, root: type[BaseModel]) -> str:
    """The message for a ``MESH_`` variable whose value could not be decoded: which one, and why."""
    culprits = []
    for key, path in _mesh_variables():
        _, holder = _resolve(root, path)
        complex_value = holder in (dict, list, set, tuple) or (
            isinstance(holder, type) and issubclass(holder, BaseModel)
        )
        if not complex_value:
            continue
        try:
            json.loads(os.environ[key])
        except ValueError:
            culprits.append(f"{'.'.join(p.lower() for p in path)} (set by {key}={os.environ[key]!r})")
    if not culprits:
        return f"a MESH_ environment variable could not be read: {exc}"
    return (
        f"{'; '.join(culprits)}: not valid JSON. Lists and dicts in MESH_ variables are JSON, "
        "for example MESH_RETRY__RETRY_ON_STATUS='[502, 503]'"
    )
