"""What a long step shows while it runs: a stage line with a spinner and the elapsed time
(:func:`stage`), or a tqdm bar (:func:`bar`). Both go to stderr and are silent when ``quiet``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator

SPINNER = "|/-\\"


@contextlib.contextmanager
def stage(what: str, quiet: bool = False, stream=None) -> Iterator[None]:
    """``with stage("exporting to onnx", quiet): ...`` shows ``what ... |`` with a spinner and
    seconds while the block runs (on a terminal), then ``what: done in 12.3 s``; on an exception
    nothing more (the error line that follows says what went wrong)."""
    stream = stream or sys.stderr
    if quiet:
        yield
        return
    t0 = time.perf_counter()
    stop = threading.Event()
    spinner = None
    if getattr(stream, "isatty", lambda: False)():

        def spin() -> None:
            for i in range(1 << 30):
                if stop.wait(0.2):
                    return
                stream.write(f"\r{what} {SPINNER[i % 4]} {time.perf_counter() - t0:.0f} s")
                stream.flush()

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
    else:
        print(f"{what} ...", file=stream, flush=True)
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        if spinner is not None:
            spinner.join()
            stream.write("\r\033[K")
        if ok:
            print(f"{what}: done in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)


def bar(iterable: Iterable | None = None, quiet: bool = False, **tqdm_options):
    """A tqdm progress bar on stderr (disabled when ``quiet``)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=quiet, file=sys.stderr, dynamic_ncols=True, **tqdm_options)
