"""The dataset YAML and :func:`load_dataset`, the one entry point for reading a dataset.

Our dataset YAML::

    format: coco            # coco | voc | yolo (no 'format': an Ultralytics data.yaml, YOLO)
    path: .                 # optional root for the paths below (default: the YAML's folder)
    names: [cat, dog]       # yolo: required (list, or {0: cat, 1: dog});
                            # voc: optional (default: all names found, sorted);
                            # coco: optional, must then equal the JSON categories (sorted by id)
    train:
      images: images/train
      annotations: annotations/train.json   # coco: JSON file; voc: folder of .xml;
                                            # yolo: labels folder (default: see below)
      list: ImageSets/Main/train.txt        # voc only, optional: the image stems to use
    val:
      images: images/val
      annotations: annotations/val.json

``train: images/train`` (a plain string) is short for ``train: {images: images/train}``.

An Ultralytics ``data.yaml`` loads unchanged: no ``format`` (YOLO); ``path`` (relative to the
YAML's folder, else to the current folder); ``train``/``val``/``test`` each an image folder, a
``.txt`` list of image paths (``./x`` and relative lines are relative to the list's folder)
or a list of those; labels found by replacing the last ``/images/`` of each image path with
``/labels/`` (``.txt`` suffix; a split ``../x`` that does not exist is read as ``x``, as
Ultralytics does for Roboflow exports); ``names`` a list or an {index: name} dict; ``nc`` (checked
against ``names``; alone it names the classes ``class0``...); ``test``/``download`` may be
empty and ``download`` is ignored (we never fetch data). A COCO JSON works directly:
``load_dataset("instances.json", images="imgs/")``.

Every value is type-checked (:mod:`.schema`); a wrong one is a one-line DataError naming
the YAML, the key and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import DataError
from . import schema
from .records import DetectionData
from .report import DataReport

FORMATS = ("coco", "voc", "yolo")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """One split: ``images`` (one folder for COCO/VOC; YOLO: folders and/or .txt image lists),
    ``annotations`` (COCO JSON, VOC XML folder, YOLO labels folder or None) and the VOC ``list``."""

    images: tuple[Path, ...]
    annotations: Path | None = None
    list: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset YAML: ``format``, ``names`` (or None) and the splits by name."""

    path: Path
    format: str
    names: list[str] | None
    splits: dict[str, SplitSpec] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, yaml_path: str | Path) -> DatasetSpec:
        yaml_path = Path(yaml_path)
        doc = _read_yaml(yaml_path)
        bad = _Bad(yaml_path)
        fmt = doc.get("format", "yolo")
        if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
            raise bad(
                "format",
                f"{schema.describe(fmt)} is not a dataset format",
                f"set 'format' to one of {', '.join(FORMATS)}",
            )
        fmt = fmt.lower()
        root = _root(doc.get("path"), yaml_path, bad)
        names = _names(doc.get("names"), doc.get("nc"), bad)
        splits = {}
        for split in SPLITS:
            entry = doc.get(split)
            if entry is None or entry == "" or entry == []:
                continue
            splits[split] = _split(entry, split, fmt, root, bad)
        if not splits:
            raise bad("train", "no train/val splits", "add 'train:' and 'val:' sections")
        return cls(path=yaml_path, format=fmt, names=names, splits=splits)


class _Bad:
    """Builds the one-line DataError for a key of the YAML."""

    def __init__(self, yaml_path: Path) -> None:
        self.yaml_path = yaml_path

    def __call__(self, key: str, what: str, fix: str) -> DataError:
        return DataError(f"{self.yaml_path}: {key}: {what}; fix: {fix}")


def _read_yaml(yaml_path: Path) -> dict:
    try:
        raw = yaml_path.read_bytes()
    except OSError:
        raise DataError(
            f"{yaml_path}: dataset YAML not found; fix: give the path of an existing data.yaml"
        ) from None
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{yaml_path}: byte {exc.start}: not UTF-8 text; fix: save the YAML as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"line {line + 1}" if line is not None else "file"
        raise DataError(
            f"{yaml_path}: {where}: invalid YAML; fix: check indentation and colons"
        ) from None
    except RecursionError:
        raise DataError(
            f"{yaml_path}: nested too deeply to be a dataset YAML; fix: see the data.yaml example in the docs"
        ) from None
    if not isinstance(doc, dict):
        raise DataError(
            f"{yaml_path}: expected a mapping with format, names, train, val; fix: see the data.yaml example in the docs"
        )
    return doc


def _root(value, yaml_path: Path, bad: _Bad) -> Path:
    """``path:`` -> the root folder (relative: to the YAML's folder, else the current folder)."""
    if value is None or value == "":
        return yaml_path.parent
    if not isinstance(value, str):
        raise bad(
            "path",
            f"expected a folder, got {schema.describe(value)}",
            "write the dataset root folder as a string, or remove 'path'",
        )
    root = Path(value)
    if root.is_absolute():
        return root
    beside = Path(
        os.path.normpath(yaml_path.parent / root)
    )  # 'cfg/../datasets/x' -> 'datasets/x' in messages
    return beside if beside.exists() or not root.exists() else root


def _names(names, nc, bad: _Bad) -> list[str] | None:
    """``names`` as a list or {index: name} dict (``nc``, when given, must agree)."""
    if nc is not None:
        try:
            nc = schema.integer(nc, "nc")
            if nc < 1:
                raise schema.Invalid(f"nc: expected a class count >= 1, got {nc}")
        except schema.Invalid as exc:
            raise bad(
                "nc", str(exc).split(": ", 1)[1], "set nc to the number of classes, or remove it"
            ) from None
    if isinstance(names, dict):
        try:
            by_index = {
                schema.integer(
                    int(k) if isinstance(k, str) and k.strip().isdigit() else k, "index"
                ): v
                for k, v in names.items()
            }
        except schema.Invalid as exc:
            raise bad(
                "names",
                f"keys must be class indices 0..N-1 ({exc})",
                "use a list of names or {0: name, 1: name}",
            ) from None
        keys = sorted(by_index)
        if keys != list(range(len(keys))):
            raise bad(
                "names", f"indices {keys} are not 0..{len(keys) - 1}", "number the classes 0..N-1"
            )
        names = [by_index[k] for k in keys]
    elif names is None:
        return [f"class{i}" for i in range(nc)] if nc else None
    elif not isinstance(names, list):
        raise bad(
            "names",
            f"expected a list of class names, got {schema.describe(names)}",
            "names: [cat, dog]",
        )
    if not names:
        raise bad("names", "empty", "list the class names: names: [cat, dog]")
    for i, name in enumerate(names):
        if (
            isinstance(name, bool)
            or not isinstance(name, (str, int, float))
            or str(name).strip() == ""
        ):
            raise bad(
                "names",
                f"class {i}: expected a name, got {schema.describe(name)}",
                "write every class name as a string",
            )
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise bad("names", f"class name {dup!r} appears twice", "make every name unique")
    if nc is not None and nc != len(names):
        raise bad(
            "nc",
            f"nc {nc} but {len(names)} names",
            "make nc equal the number of names, or remove nc",
        )
    return names


def _paths(value, key: str, root: Path, bad: _Bad, many: bool) -> tuple[Path, ...]:
    """A path string (or, with ``many``, a list of them) relative to ``root``."""
    values = value if many and isinstance(value, list) else [value]
    out = []
    for v in values:
        if not isinstance(v, str) or not v.strip() or "\x00" in v:
            kind = "a path or a list of paths" if many else "a path"
            raise bad(
                key,
                f"expected {kind}, got {schema.describe(v)}",
                f"write {key} as a folder or file name string",
            )
        path = root / v
        if not path.exists() and v.startswith("../") and (root / v[3:]).exists():
            path = (
                root / v[3:]
            )  # as Ultralytics: Roboflow exports write '../train/images' beside the YAML
        out.append(path)
    return tuple(out)


def _split(entry, split: str, fmt: str, root: Path, bad: _Bad) -> SplitSpec:
    if isinstance(entry, (str, list)):
        entry = {"images": entry}
    if not isinstance(entry, dict) or entry.get("images") in (None, "", []):
        raise bad(
            split,
            f"needs 'images' (got {schema.describe(entry)})",
            f"{split}: {{images: ..., annotations: ...}}",
        )
    images = _paths(entry["images"], f"{split}.images", root, bad, many=fmt == "yolo")
    ann = entry.get("annotations")
    if ann is None and fmt != "yolo":
        raise bad(
            split,
            "'annotations' missing",
            f"give the {'JSON file' if fmt == 'coco' else 'XML folder'}",
        )
    return SplitSpec(
        images=images,
        annotations=_paths(ann, f"{split}.annotations", root, bad, many=False)[0]
        if ann is not None
        else None,
        list=_paths(entry["list"], f"{split}.list", root, bad, many=False)[0]
        if entry.get("list") is not None
        else None,
    )


def dataset_files(source: str | Path) -> list[Path]:
    """The files and folders a dataset ``source`` (YAML or COCO JSON) names: the source itself
    and, for a YAML, every split's image folders / lists and annotation files or folders
    (what a command must never write over). A YAML that does not parse gives just itself:
    reading the dataset reports that problem."""
    source = Path(source)
    files = [source]
    if source.suffix.lower() in (".yaml", ".yml") and source.is_file():
        try:
            spec = DatasetSpec.from_yaml(source)
        except DataError:
            return files
        for s in spec.splits.values():
            files += [*s.images, *(p for p in (s.annotations, s.list) if p is not None)]
    return files


def load_dataset(
    source: str | Path,
    split: str = "train",
    *,
    images: str | Path | None = None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    verify_images: bool = False,
    report: DataReport | None = None,
    show_progress: bool = False,
) -> DetectionData:
    """Read one split of a dataset: ``source`` is a dataset YAML, a COCO JSON (an ``image_info``
    JSON without annotations too) or a folder of images (unannotated, with ``class_names`` /
    ``category_ids`` required: :mod:`.folder`).

    ``images`` overrides the image folder. ``class_names`` and ``category_ids`` impose a
    class list (pass the training split's to the validation split so labels agree).
    ``verify_images`` decodes every image now (slow, for ``data check``); otherwise only each
    file's header is read (its size checked against the annotations) and files corrupt past
    the header are caught when loaded. Problems are in the
    returned ``.report``; a split with no usable image raises DataError. ``show_progress``: a
    tqdm bar (stderr) over the images.
    """
    source = Path(source)
    if source.is_dir():  # a folder of images: no annotations, the caller's (model's) classes
        from .folder import read_image_folder

        folder_names = list(class_names or [])
        return read_image_folder(
            source,
            class_names=folder_names,
            category_ids=list(category_ids)
            if category_ids is not None
            else list(range(len(folder_names))),
            verify_images=verify_images,
            report=report,
        )
    if source.suffix.lower() == ".json":
        from .coco import read_coco

        return read_coco(
            source,
            images,
            class_names=class_names,
            category_ids=category_ids,
            verify_images=verify_images,
            report=report,
            show_progress=show_progress,
        )
    if source.suffix.lower() not in (".yaml", ".yml"):
        raise DataError(
            f"{source}: unknown dataset file type; fix: give a dataset .yaml or a COCO .json"
        )
    spec = DatasetSpec.from_yaml(source)
    if split not in spec.splits:
        raise DataError(
            f"{source}: no '{split}' split (has {', '.join(spec.splits)}); fix: add a '{split}:' section"
        )
    s = spec.splits[split]
    if s.annotations is not None and not s.annotations.exists():
        kind = {"coco": "COCO JSON file", "voc": "folder of .xml files"}.get(
            spec.format, "labels folder"
        )
        raise _Bad(source)(
            f"{split}.annotations",
            f"{s.annotations} not found",
            f"set {split}.annotations to an existing {kind} (relative to the YAML's 'path:' or folder)",
        )
    images_dir = Path(images) if images is not None else s.images[0]
    names = class_names if class_names is not None else spec.names
    if spec.format == "coco":
        from .coco import read_coco

        assert s.annotations is not None  # _split refuses a coco split without them

        return read_coco(
            s.annotations,
            images_dir,
            class_names=names,
            category_ids=category_ids,
            verify_images=verify_images,
            report=report,
            show_progress=show_progress,
        )
    if spec.format == "voc":
        from .voc import read_voc

        assert s.annotations is not None  # _split refuses a voc split without them

        return read_voc(
            s.annotations,
            images_dir,
            class_names=names,
            ids_file=s.list,
            verify_images=verify_images,
            report=report,
            show_progress=show_progress,
        )
    from .yolo import read_yolo

    if names is None:
        raise DataError(
            f"{source}: YOLO datasets need class names; fix: add 'names: [...]' to the YAML"
        )
    sources = [Path(images)] if images is not None else list(s.images)
    for path in sources:
        if not path.exists():
            raise DataError(
                f"{source}: {split}: {path} not found; fix: set '{split}' to an image folder or a .txt list of images"
            )
    return read_yolo(
        sources,
        s.annotations,
        class_names=names,
        verify_images=verify_images,
        report=report,
        show_progress=show_progress,
    )
