"""A JSON object read one top-level value at a time, its large arrays one element at a time.

A COCO instances file of train2017's size is hundreds of MB; ``json.load`` holds all of it
as Python objects at once (every polygon coordinate a float object, over a GB). Here the
file is read in blocks and each element of the arrays named in ``stream`` is decoded by the
standard library's C scanner on its own, so memory holds one block and the values the caller
keeps. Syntax is exactly ``json``'s (same decoder, same NaN/Infinity handling); an error is
a :class:`json.JSONDecodeError` whose line, column and char offset count from the start of
the file, as ``json.load`` would give them.

    with open(path, encoding="utf-8") as f:
        for key, value in top_level_items(f, stream={"annotations"}):
            ...  # value: an iterator over the elements when key is streamed and holds an array

Elements of a streamed array are decoded a block at a time by orjson when it is installed
(the ``fastjson`` extra; ~2x faster): the block is cut after a ``}`` followed by ``,``/``]``,
and only a block that orjson reads whole, holding no NaN/Infinity (which orjson refuses) and
no integer of 19+ digits (which orjson turns into a float), is taken from it; anything else
goes element by element through the standard decoder, so the values are json's.

``skip_polygons`` names streamed arrays whose elements' polygon ``"segmentation"`` values
(``[[x, y, ...], ...]``) the caller does not read: the fast path replaces each by ``null``
before decoding, which saves creating a float object per coordinate (train2017's size: read
12.9 -> 6.2 s). The slow path may still return them; RLE segmentations are always kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator
from typing import Any, TextIO

_SPACE = re.compile(r"[ \t\n\r]*")
# a run of 19+ digits (an integer orjson may turn into a float), found fast: digits -> "0", rest -> " "
_DIGIT_MASK = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_DIGITS = b"0" * 19
_DECODER = json.JSONDecoder()
# a polygon segmentation value: only numbers, commas, brackets and spaces up to its closing "]]"
_POLYGON = re.compile(rb'"segmentation"\s*:\s*\[\s*\[[-+0-9.eE,\s\[\]]*\]\s*\]')
BLOCK_CHARS = 1 << 22


def _orjson_loads() -> Callable[[bytes], Any] | None:
    try:
        import orjson
    except ImportError:
        return None
    return orjson.loads


# decodes a block of elements b"[...]" (UTF-8); None: element by element only (tests swap it)
bulk_loads: Callable[[bytes], Any] | None = _orjson_loads()


class _Text:
    """The unread part of a text file, refilled in blocks; positions count from the file start."""

    def __init__(self, f: TextIO, block: int) -> None:
        self.f, self.block = f, block
        self.text, self.pos, self.eof = "", 0, False
        self.base = 0  # file offset (chars) of self.text[0]
        self.line, self.column = 1, 0  # line of self.text[0], chars before it on that line
        self.slow_until = -1  # file offset: decode element by element before it (a bulk try failed)

    def fill(self) -> bool:
        """Read the next block (at least as much as is buffered, so a huge value costs
        O(n log n), not O(n^2)); drop what was consumed. False at end of file."""
        if self.eof:
            return False
        chunk = self.f.read(max(self.block, len(self.text) - self.pos))
        if not chunk:
            self.eof = True
            return False
        newlines = self.text.count("\n", 0, self.pos)
        if newlines:
            self.line += newlines
            self.column = self.pos - self.text.rfind("\n", 0, self.pos) - 1
        else:
            self.column += self.pos
        self.base += self.pos
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character after white space ('' at end of file)."""
        while True:
            match = _SPACE.match(self.text, self.pos)
            self.pos = match.end() if match else self.pos
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""

    def error(self, msg: str, pos: int | None = None) -> json.JSONDecodeError:
        """``msg`` at ``pos`` (in self.text) with the file's line/column/char, like json's."""
        pos = self.pos if pos is None else pos
        exc = json.JSONDecodeError(msg, "", 0)
        newlines = self.text.count("\n", 0, pos)
        line = self.line + newlines
        column = pos - self.text.rfind("\n", 0, pos) if newlines else self.column + pos + 1
        exc.pos, exc.lineno, exc.colno = self.base + pos, line, column
        exc.args = (f"{msg}: line {line} column {column} (char {self.base + pos})",)
        return exc

    def take(self, char: str, msg: str) -> None:
        if self.peek() != char:
            raise self.error(msg)
        self.pos += 1

    def value(self) -> Any:
        """Decode the next value; refill while it runs past the buffered text."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if self.fill():
                    continue
                raise self.error(exc.msg, exc.pos) from None
            # a number cut by the block's end ("1.5e|3", "12|3") decodes as a shorter one
            near_end = end >= len(self.text) - (0 if isinstance(obj, (dict, list, str)) else 2)
            if near_end and self.fill():
                continue
            self.pos = end
            return obj

    def bulk(self, loads: Callable[[bytes], Any], skip_polygons: bool = False) -> list | None:
        """The array elements from here to the last complete one in the buffer, decoded in one
        call, or None (then the caller decodes one element the standard way); with
        ``skip_polygons``, polygon segmentations decode as None."""
        if self.base + self.pos < self.slow_until:
            return None
        if len(self.text) - self.pos < self.block // 2:
            self.fill()
        text, start = self.text, self.pos
        cut = text.rfind("}", start)
        for _ in range(64):  # a "}" followed by "," or "]" (verified by the decode below)
            after = _SPACE.match(text, cut + 1) if cut > start else None
            nxt = after.end() if after else len(text)
            if nxt < len(text) and text[nxt] in ",]":
                break
            cut = text.rfind("}", start, cut) if cut > start else -1
        else:
            cut = -1
        if cut <= start:
            self.slow_until = self.base + len(text)
            return None
        block = text[start : cut + 1]
        try:
            raw = block.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, a ValueError
            if skip_polygons:
                raw = _POLYGON.sub(b'"segmentation":null', raw)
            if _LONG_DIGITS in raw.translate(_DIGIT_MASK) or b"NaN" in raw or b"Infinity" in raw:
                raise ValueError("values orjson reads otherwise than json")
            values = loads(b"[" + raw + b"]")
        except ValueError:  # orjson.JSONDecodeError and json's are ValueErrors
            self.slow_until = self.base + cut + 1
            return None
        self.pos = cut + 1
        return values if isinstance(values, list) else None


def top_level_items(
    f: TextIO,
    stream: Collection[str] = (),
    block: int = BLOCK_CHARS,
    skip_polygons: Collection[str] = (),
) -> Iterator[tuple[str, Any]]:
    """(key, value) of the JSON object in ``f``, in file order. For a key in ``stream`` whose
    value is an array, the value is an iterator over its elements, valid until the next item
    is asked for (what is left of it is then read and dropped). A document that is not an
    object is yielded whole as ``("", value)``. Raises json.JSONDecodeError."""
    text = _Text(f, block)
    if text.peek() != "{":
        document = text.value()
        if text.peek():
            raise text.error("Extra data")
        yield "", document
        return
    text.pos += 1
    if text.peek() == "}":
        text.pos += 1
    else:
        while True:
            if text.peek() != '"':
                raise text.error("Expecting property name enclosed in double quotes")
            key = text.value()
            text.take(":", "Expecting ':' delimiter")
            if key in stream and text.peek() == "[":
                elements = _elements(text, key in skip_polygons)
                yield key, elements
                for _ in elements:  # the caller stopped early: skip the rest
                    pass
            else:
                yield key, text.value()
            char = text.peek()
            text.pos += 1
            if char == "}":
                break
            if char != ",":
                text.pos -= 1
                raise text.error("Expecting ',' delimiter")
    if text.peek():
        raise text.error("Extra data")


def _elements(text: _Text, skip_polygons: bool = False) -> Iterator[Any]:
    text.take("[", "Expecting '['")
    if text.peek() == "]":
        text.pos += 1
        return
    while True:
        values = text.bulk(bulk_loads, skip_polygons) if bulk_loads is not None else None
        if values:
            yield from values
        else:
            yield text.value()
        char = text.peek()
        text.pos += 1
        if char == "]":
            return
        if char != ",":
            text.pos -= 1
            raise text.error("Expecting ',' delimiter")
