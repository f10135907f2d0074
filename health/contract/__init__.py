"""The health contracts' JSON Schemas (Draft 2020-12).

The ``*.schema.json`` files beside this module are the single source: docs/health-contract.md
publishes them verbatim (a test holds the two equal) and the probes validate bodies against
them. They are read once, at import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).parent


def schema_load(name: str) -> dict[str, Any]:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return schema


NATIVE_SCHEMA = schema_load("native")
CERTIFIED_SCHEMA = schema_load("certified")

# The certified schema asks for capacity or max_associations, but a body with a depth and
# neither is still a good heartbeat: the backend is up, only its load is unknown (the
# document says so). The reader drops that one clause and keeps the rest of the schema.
DENOMINATOR_CLAUSE = {"anyOf": [{"required": ["capacity"]}, {"required": ["max_associations"]}]}

native_validator = Draft202012Validator(NATIVE_SCHEMA)
certified_validator = Draft202012Validator(
    CERTIFIED_SCHEMA | {"allOf": [c for c in CERTIFIED_SCHEMA["allOf"] if c != DENOMINATOR_CLAUSE]}
)
