"""The validation layer: typed readers for values parsed from JSON, YAML, XML and label lines.

Every reader takes a value as the file holds it and returns it as the type we use, or raises
:class:`Invalid` with a short reason that names what was expected and what was found
(``expected an integer, got 'img_one' (str)``). The dataset readers turn an ``Invalid`` into
a counted problem record (``DataReport.add``) or, for the dataset description itself, into a
one-line :class:`~efficientdet.errors.DataError`. Plain code, no schema library: the
formats are small and the messages are ours.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


class Invalid(ValueError):
    """A value of the wrong type or range; ``str(exc)`` is the reason, one line."""


def describe(value) -> str:
    """``'img_one' (str)``, ``null``, ``[1, 2] (list)``: a value as the user wrote it, shortened."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def integer(value, what: str = "value") -> int:
    """An integer id/index: an int, or a float with an integral finite value (``3.0``).
    Booleans, strings, NaN, inf, 3.5 and containers are Invalid."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise Invalid(f"{what}: expected an integer, got {describe(value)}")
    if isinstance(value, Integral):
        return int(value)
    if not math.isfinite(value) or not float(value).is_integer():
        raise Invalid(f"{what}: expected an integer, got {describe(value)}")
    return int(float(value))


def number(value, what: str = "value", allow_null: bool = False) -> float:
    """A real number as float (NaN/inf pass: box checks report them). ``None`` -> NaN when
    ``allow_null``; booleans, strings and containers are Invalid."""
    if value is None and allow_null:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, Real):
        raise Invalid(f"{what}: expected a number, got {describe(value)}")
    return float(value)


def positive_size(value, what: str = "value") -> int:
    """An image width/height: an integer > 0 (``640.0`` is accepted)."""
    n = integer(value, what)
    if n <= 0:
        raise Invalid(f"{what}: expected a size > 0, got {n}")
    return n


def text(value, what: str = "value") -> str:
    """A non-empty string (file names, class names)."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what}: expected a non-empty string, got {describe(value)}")
    return value


def relative_path(value, what: str = "file_name") -> str:
    """A file name inside a folder: a non-empty string, relative, without '..' parts or NUL
    (a name that leaves the folder is a path trick, not an image of this dataset)."""
    name = text(value, what)
    if "\x00" in name:
        raise Invalid(f"{what}: {name!r} contains a NUL character")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise Invalid(
            f"{what}: {name!r} leaves the image folder (absolute path or '..'); "
            "give the path relative to the image folder"
        )
    return name


def flag(value, what: str = "value") -> bool:
    """A 0/1 flag (COCO ``iscrowd``, VOC ``difficult``): 0, 1, true, false (also "0"/"1" from XML)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise Invalid(f"{what}: expected 0 or 1, got {describe(value)}")


def class_index(token: str, num_classes: int, what: str = "class") -> int:
    """A YOLO class token (``'2'`` or ``'2.0'``) -> index in 0..num_classes-1.

    Raises Invalid for a token that is not a finite integer, and :class:`OutOfRange` (a
    subclass) for an integer outside the class list."""
    try:
        value = float(token)
    except ValueError:
        raise Invalid(f"{what} {token!r} is not a number") from None
    if not math.isfinite(value) or not value.is_integer():
        raise Invalid(f"{what} {token!r} is not an integer class index")
    if not 0 <= value < num_classes:
        raise OutOfRange(f"{what} {int(value)} is not in 0..{num_classes - 1}")
    return int(value)


class OutOfRange(Invalid):
    """A well-formed value outside the allowed range (an unknown class index)."""
