"""The proxy's JSON error envelope, as a test reads it."""

from __future__ import annotations

import json
from typing import Any


def envelope(body: bytes) -> dict[str, Any]:
    """The envelope, checked to have exactly its three fields."""
    data: dict[str, Any] = json.loads(body)
    assert set(data) == {"status", "message", "request_id"}, data
    return data


def message(body: bytes) -> str:
    """The envelope's message."""
    return str(json.loads(body)["message"])
