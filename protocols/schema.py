"""The JSON Schema of protocol files, generated from the model so editors can check as you type."""

from __future__ import annotations

import json
from typing import Any

from cyclerd.protocols.model import Protocol

SCHEMA_FILE = "protocol.schema.json"


def json_schema() -> dict[str, Any]:
    """The schema of what a protocol file may contain (the input form, not the loaded model)."""
    schema = Protocol.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cyclerd protocol"
    # Files may name their schema with a `$schema` key; the loader ignores it.
    schema["properties"] = {"$schema": {"type": "string"}, **schema["properties"]}
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
