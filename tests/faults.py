"""Fault injection shared by the tests: one chosen call of a function fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def fail_on_call(owner: object, name: str, n: int, error: BaseException) -> Iterator[None]:
    """Inside the block, the ``n``-th call (1-based) of ``owner.name`` raises ``error``
    (``KeyboardInterrupt()`` for Ctrl+C, ``OSError(errno.ENOSPC, ...)`` for a full disk); the
    other calls run the original. A block that ends without reaching call ``n`` fails the test:
    the fault it stands for never happened."""
    real, calls = getattr(owner, name), 0

    def nth_fails(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            raise error
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, nth_fails)
        yield
    assert calls >= n, f"{name} was called {calls} time(s): call {n} never failed"
