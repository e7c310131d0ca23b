"""Setting one request header per attempt without httpx's generic (and slower) ``Headers.__setitem__``.

httpx keeps headers as a list of ``(raw_key, lower_key, value)`` byte triples; the Host header it adds
itself comes first. Where that layout is not what we expect, the public API is used instead.
"""

from __future__ import annotations

import httpx

__all__ = ["set_header"]


def set_header(headers: httpx.Headers, lower_name: bytes, value: bytes) -> None:
    """Replace every ``lower_name`` header with one carrying ``value`` (``lower_name`` is lower-case)."""
    items = getattr(headers, "_list", None)
    if not isinstance(items, list):  # pragma: no cover - a future httpx with another layout
        headers[lower_name.decode("latin-1")] = value.decode("latin-1")
        return
    if items and items[0][1] == lower_name:  # the common case for Host
        items[0] = (items[0][0], lower_name, value)
        index = 1
        while index < len(items):
            if items[index][1] == lower_name:
                del items[index]
            else:
                index += 1
        return
    found = False
    index = 0
    while index < len(items):
        if items[index][1] == lower_name:
            if found:
                del items[index]
                continue
            items[index] = (items[index][0], lower_name, value)
            found = True
        index += 1
    if not found:
        items.append((lower_name, lower_name, value))
