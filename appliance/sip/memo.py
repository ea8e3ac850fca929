"""Parsed header values shared by every message that carries the same text.

The same text arrives again and again: a phone's Contact in each of its requests, a
dialog's From and To in every request and response of the call, the Via of a request
the box sent in each response to it, the Request-URI a phone dials. `Memo` keeps what
a parser made of a text (or, for the express paths' readers, what their checks
concluded), so that the next message carrying that exact text gets the
same object without parsing it again. That is safe because the objects kept here
(`SipURI`, `NameAddr`, `Via`) are never changed once parsed: code that needs another
value builds a new object (`SipURI.copy`, `endpoint.stamp_received`), and
tests/unit/test_memo.py checks, after calls and registrations, that every kept object
still equals a fresh parse of its text.

The texts come from the network, so a memo is bounded: new texts go into a young
generation; when it is full it becomes the old one (the previous old one is dropped)
and a text found in the old generation moves back to the young one. A text in use is
kept; one unused for `size` new texts is forgotten. At most 2 × `size` entries: the
name-addr memo (4,096) with the URIs its entries hold, the Via and the URI memos
(2,048 each) took 10.5 MB together when filled with distinct texts (tracemalloc).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Memo"]

T = TypeVar("T")


class Memo(Generic[T]):
    """Parse results by their exact text, bounded by two generations of `size` texts."""

    __slots__ = ("_young", "_old", "size")

    def __init__(self, size: int) -> None:
        self._young: dict[str, T] = {}
        self._old: dict[str, T] = {}
        self.size = size

    def get(self, text: str) -> T | None:
        found = self._young.get(text)
        if found is None:
            found = self._old.get(text)
            if found is not None:
                self.put(text, found)  # in use: keep it past the next turn
        return found

    def put(self, text: str, value: T) -> None:
        young = self._young
        if len(young) >= self.size:
            self._old = young
            self._young = young = {}
        young[text] = value

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def items(self) -> list[tuple[str, T]]:
        """Every text kept and its value, the old generation's first."""
        return list(self._old.items()) + list(self._young.items())

    def clear(self) -> None:
        self._young = {}
        self._old = {}
