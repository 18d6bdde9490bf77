"""The JSON reading that every state changelog codec (grouping, rates, sessions) starts with.

A changelog record is whatever bytes the topic holds: decoding must turn anything — not bytes,
not UTF-8, nested past the recursion limit, not JSON — into a ValueError naming the record, so
that a restore can say which record is bad instead of crashing.
"""

from __future__ import annotations

import json
from typing import Any


def load_state_json(data: bytes, what: str) -> Any:
    """``data`` parsed as UTF-8 JSON; ValueError starting with ``what`` for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and the int-digits limit
        raise ValueError(f"{what}: not JSON ({exc})") from None
