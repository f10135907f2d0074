"""The published contract (docs/health-contract.md) and the code that reads bodies agree:
its examples validate against its schemas and read as good heartbeats, and bodies its
schemas reject fail the heartbeat."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from health.contract import SCHEMA_DIR
from health.probes import ProbeError, contract_certified, contract_native
from tests.harness import ROOT

DOC = (ROOT / "docs" / "health-contract.md").read_text()
BLOCKS = re.findall(r"```json( [a-z-]+)?\n(.*?)```", DOC, flags=re.S)
SCHEMA_TEXTS = {tag.strip(): text for tag, text in BLOCKS if tag}
SCHEMAS = {tag: json.loads(text) for tag, text in SCHEMA_TEXTS.items()}
EXAMPLES = [json.loads(text) for tag, text in BLOCKS if not tag]
READERS = {"native-schema": contract_native, "certified-schema": contract_certified}


def _kind(example: dict) -> str:
    return "native-schema" if "queue" in example else "certified-schema"


def test_the_document_publishes_both_schemas_and_examples():
    assert set(SCHEMAS) == {"native-schema", "certified-schema"}
    assert len(EXAMPLES) >= 3
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("tag, name", [("native-schema", "native"), ("certified-schema", "certified")])
def test_the_published_schemas_are_the_files_the_probes_validate_against(tag, name):
    # The document quotes health/contract/*.schema.json byte for byte; edit the file and
    # paste it into the document (or the other way round), never one alone.
    assert SCHEMA_TEXTS[tag].encode() == (SCHEMA_DIR / f"{name}.schema.json").read_bytes()


def test_a_depth_without_a_denominator_breaks_the_published_schema_yet_reads_as_up_with_load_unknown():
    body = {"status": "ok", "queue_depth": 5}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, SCHEMAS["certified-schema"])
    reading = contract_certified(body)
    assert reading.load is None and reading.queue_depth == 5 and "load unknown" in reading.load_note


@pytest.mark.parametrize("n", range(3))
def test_each_published_example_validates_and_reads_as_a_good_heartbeat(n):
    example = EXAMPLES[n]
    kind = _kind(example)
    jsonschema.validate(example, SCHEMAS[kind])
    reading = READERS[kind](example)
    assert reading.load is not None and reading.load >= 0


@pytest.mark.parametrize("kind, body", [
    ("certified-schema", {"queue_depth": 1, "capacity": 5}),
    ("certified-schema", {"status": "ok", "capacity": 5}),
    ("certified-schema", {"status": "ok", "queue_depth": "5", "capacity": 5}),
    ("certified-schema", {"status": "ok", "queue_depth": -1, "capacity": 5}),
    ("certified-schema", {"status": "ok", "load": 0.2, "capacity": 0}),
    ("native-schema", {"status": "ok"}),
    ("native-schema", {"status": "ok", "queue": {"received": 1, "hold": 0, "processing": 0}}),
    ("native-schema", {"status": "ok", "queue": {"received": 1.5, "hold": 0, "processing": 0, "failed": 0}}),
])
def test_a_body_the_schema_rejects_is_a_failed_heartbeat(kind, body):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, SCHEMAS[kind])
    with pytest.raises(ProbeError):
        READERS[kind](body)
