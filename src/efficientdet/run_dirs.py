"""Where a command writes: a new run folder every time, never a folder that holds its inputs.

One rule for every command (train, val, predict, export, bench, demo):

* no ``--out``: a new numbered folder ``runs/COMMAND/1``, ``runs/COMMAND/2``... (the first
  number above all the existing ones). The default folders ``runs/COMMAND`` themselves always
  hold numbered runs, also when given as ``--out`` (``TrainConfig.out`` defaults to ``runs/train``).
* ``--out DIR``: DIR when it does not exist or is empty, or with ``exist_ok``; otherwise
  ``DIR2``, ``DIR3``... (the first free one), so an earlier run is never mixed with a new one.
  An ``--out`` that is a file is refused (one line), not turned into ``FILE2``.
* :func:`refuse_inputs_inside` refuses an output folder that is, or holds, an input (a source
  image / video / folder, the dataset, the weights file): one line, exit 2.
* :func:`refuse_output_file` does the same for a single output file (``--json PATH``): it may
  not be an input nor an existing file inside an input folder, nor a folder; checked before
  the work starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

RUNS_ROOT = Path("runs")
COMMANDS_WITH_RUNS = ("train", "val", "predict", "export", "bench", "demo", "synth", "check")


def _numbered_child(base: Path) -> Path:
    numbers = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return base / str(max(numbers, default=0) + 1)


def make_run_dir(
    out: str | os.PathLike | None, exist_ok: bool = False, command: str = "train"
) -> Path:
    """The folder a run of ``command`` writes to (see the module docstring); not created here,
    except that a numbered folder is created at once to claim its number."""
    from .fileio import make_dirs

    path = Path(out) if out is not None else RUNS_ROOT / command
    if numbered(out, command):
        for _ in range(100):  # another process may claim the same number between the scan and mkdir
            child = _numbered_child(path)
            make_dirs(path)
            try:
                child.mkdir()
                return child
            except FileExistsError:
                continue
        raise ConfigError(f"{path}: cannot claim a new numbered run folder; fix: give --out")
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{path}: --out names a file, not a folder; fix: give --out a new or empty folder"
        )
    if exist_ok or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    n = 2
    while Path(f"{path}{n}").exists():
        n += 1
    return Path(f"{path}{n}")


def numbered(out: str | os.PathLike | None, command: str) -> bool:
    """Whether ``--out`` (None: the default) gets a new numbered folder ``runs/COMMAND/N``."""
    path = Path(out) if out is not None else RUNS_ROOT / command
    return path in {RUNS_ROOT / c for c in COMMANDS_WITH_RUNS}


def created_here(out: str | os.PathLike | None, folder: Path, command: str) -> Path | None:
    """``folder`` (``make_run_dir(out, ..., command)``) when this run creates it: a numbered
    one, or one that does not exist yet; None for a folder that existed before (the user's)."""
    return folder if numbered(out, command) or not folder.exists() else None


def remove_if_empty(folder: Path | None) -> None:
    """Remove ``folder`` (one a command created, None: none) if nothing was written into it."""
    if folder is not None:
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()


@contextlib.contextmanager
def claimed_run_dir(out: str | os.PathLike | None, exist_ok: bool, command: str) -> Iterator[Path]:
    """``with claimed_run_dir(args.out, args.exist_ok, "val") as folder:``: the folder of
    :func:`make_run_dir`; when the block raises (an error, Ctrl+C) before anything was written
    into it, a folder this run created is removed again (never one that existed before)."""
    folder = make_run_dir(out, exist_ok, command)
    created = created_here(out, folder, command)
    try:
        yield folder
    except BaseException:
        remove_if_empty(created)
        raise


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_inputs_inside(out: str | os.PathLike, inputs: dict[str, object]) -> None:
    """ConfigError when the output folder ``out`` is, or contains, one of ``inputs``
    ({what: path or list of paths}; None and non-existing paths are ignored)."""
    out_real = Path(os.path.realpath(out))
    for what, value in inputs.items():
        paths = value if isinstance(value, (list, tuple)) else [value]
        for p in paths:
            if p is None or not os.path.exists(str(p)):
                continue
            if _inside(Path(os.path.realpath(str(p))), out_real):
                raise ConfigError(
                    f"{out}: this output folder holds the {what} {p}, which the results could overwrite; "
                    "fix: give another --out (or none: a new runs/COMMAND/N)"
                )


def refuse_output_file(
    path: str | os.PathLike | None, inputs: dict[str, object], option: str = "--json"
) -> None:
    """ConfigError, before any work, when the file ``path`` that ``option`` names is a folder,
    or already exists and is one of ``inputs`` or lies inside an input folder (writing it would
    overwrite something the user gave), or lies in an existing folder that cannot be written.
    None and '-' (stdout) pass."""
    if path is None or str(path) == "-":
        return
    parent = Path(path).parent
    if parent.is_dir() and not os.access(
        parent, os.W_OK
    ):  # read-only: say so now, not after the work
        raise ConfigError(
            f"{path}: {option} cannot be written (folder {parent} is read-only); "
            f"fix: give {option} a path in a folder you can write to"
        )
    if not os.path.lexists(path):
        return
    if os.path.isdir(path):
        raise ConfigError(
            f"{path}: {option} names a folder; fix: give {option} a file name, e.g. {Path(path) / 'results.json'}"
        )
    real = Path(os.path.realpath(path))
    for what, value in inputs.items():
        for p in value if isinstance(value, (list, tuple)) else [value]:
            if p is None or not os.path.exists(str(p)):
                continue
            p_real = Path(os.path.realpath(str(p)))
            if real == p_real:
                raise ConfigError(
                    f"{path}: {option} would overwrite the {what} {p}; fix: give {option} a new file name"
                )
            if _inside(real, p_real):
                raise ConfigError(
                    f"{path}: {option} would overwrite a file in the {what} {p}; "
                    f"fix: give {option} a new file name"
                )
