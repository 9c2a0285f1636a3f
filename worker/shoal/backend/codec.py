"""JSON to and from the database: what may be stored is decided here, before any SQL.

`json_text` refuses what PostgreSQL's jsonb would refuse only at write time —
NaN and infinities, U+0000, unpaired surrogates — and values over
`MAX_JSON_BYTES`, so a bad payload or result is a clear error for its own
task instead of a failed statement that takes other rows down with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
import orjson

from shoal.errors import InvalidInput

MAX_JSON_BYTES = 16 * 1024 * 1024

# A run of 20 digits may be an integer beyond 64 bits, which orjson would
# silently read as a float; `json` keeps it exact.
_LONG_DIGITS = re.compile(r"\d{20}")


def from_json(text: str) -> Any:
    """Decode JSON from the database exactly: orjson (five times faster than `json`
    on a claim's payloads), or `json` for text with long digit runs or that orjson
    refuses."""
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb parameters are JSON text (encoded once, by `json_text`); results are decoded."""
    await conn.set_type_codec("jsonb", encoder=str, decoder=from_json,
                              schema="pg_catalog", format="text")


def json_text(value: Any, limit: int = MAX_JSON_BYTES) -> str:
    """`value` as JSON text that jsonb accepts; InvalidInput saying why not."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(str(exc)) from None
    if len(text) > limit:  # ASCII: characters are bytes
        raise InvalidInput(f"{len(text):,} bytes of JSON, over the limit of {limit:,}")
    # Escapes of NUL and surrogates are rare: only then look at the strings themselves.
    if ("\\u0000" in text or "\\ud" in text) and (bad := _unstorable(json.loads(text))):
        raise InvalidInput(bad)
    return text


def check_text(value: str, what: str) -> str:
    """`value` unchanged; InvalidInput when Postgres could not store it as text."""
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} contains an unpaired surrogate") from None
    return value


def printable(text: str) -> str:
    """`text` made storable: NUL and unpaired surrogates become U+FFFD."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _unstorable(value: Any) -> str | None:
    for text in _strings(value):
        try:
            check_text(text, "a string")
        except InvalidInput as exc:
            return str(exc)
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
