"""The ApiKey CRD's status schema, checked the way the API server would check a write.

``schema_errors`` covers the structural-schema keywords the CRD uses (types, enums,
lengths, patterns, date-times, required fields, list-map keys), so a unit test can prove
that a status the controller writes is one the API server would take.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml

CRD = Path(__file__).parents[2] / "crds" / "apikeys.securekeys.io.yaml"


def _status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    return cast(dict[str, Any], version["schema"]["openAPIV3Schema"]["properties"]["status"])


STATUS_SCHEMA = _status_schema()


def is_stamp(value: str) -> bool:
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return "T" in value and parsed.tzinfo is not None


def schema_errors(value: Any, schema: Mapping[str, Any], where: str = "status") -> list[str]:
    """What a structural schema (the keywords the ApiKey CRD uses) says is wrong.

    ``None`` under an object is a merge-patch deletion and always allowed.
    """
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    }
    if kind in checks and not checks[kind](value):
        return [f"{where}: not {kind}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in enum")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not is_stamp(value):
            errors.append(f"{where}: not a date-time")
    if isinstance(value, int) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: below {schema['minimum']}")
    if isinstance(value, int) and abs(value) >= 2**63:
        errors.append(f"{where}: beyond int64")
    if isinstance(value, dict):
        for required in schema.get("required", ()):
            if value.get(required) is None:
                errors.append(f"{where}: {required} missing")
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is not None and item is not None:
                errors.extend(schema_errors(item, sub, f"{where}.{key}"))
    if isinstance(value, list):
        for index, item in enumerate(value):
            errors.extend(schema_errors(item, schema.get("items", {}), f"{where}[{index}]"))
        keys = schema.get("x-kubernetes-list-map-keys")
        if keys:
            seen = [
                json.dumps([i.get(k) for k in keys], default=str)
                for i in value
                if isinstance(i, dict)
            ]
            if len(seen) != len(set(seen)):
                errors.append(f"{where}: duplicate list-map keys {keys}")
    return errors
