"""The dataset YAML and :func:`load_dataset`, the one entry point for reading a dataset.

A dataset YAML::

    format: coco            # coco | voc | yolo
    path: .                 # optional root for the paths below (default: the YAML's folder)
    names: [cat, dog]       # yolo: required (list, or {0: cat, 1: dog});
                            # voc: optional (default: all names found, sorted);
                            # coco: optional, must then equal the JSON categories (sorted by id)
    train:
      images: images/train
      annotations: annotations/train.json   # coco: JSON file; voc: folder of .xml;
                                            # yolo: labels folder (default: images -> labels)
      list: ImageSets/Main/train.txt        # voc only, optional: the image stems to use
    val:
      images: images/val
      annotations: annotations/val.json

``train: images/train`` (a plain string) is short for ``train: {images: images/train}``.
A COCO JSON works directly: ``load_dataset("instances.json", images="imgs/")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import DataError
from .records import DetectionData
from .report import DataReport

FORMATS = ("coco", "voc", "yolo")


@dataclass(frozen=True)
class SplitSpec:
    images: Path
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
    def from_yaml(cls, yaml_path: str | Path) -> "DatasetSpec":
        yaml_path = Path(yaml_path)
        try:
            doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        except OSError:
            raise DataError(f"{yaml_path}: dataset YAML not found; fix: give the path of an existing data.yaml") from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f"line {line + 1}" if line is not None else "file"
            raise DataError(f"{yaml_path}: {where}: invalid YAML; fix: check indentation and colons") from None
        if not isinstance(doc, dict):
            raise DataError(f"{yaml_path}: expected a mapping with format, names, train, val; fix: see the data.yaml example in the docs")
        fmt = str(doc.get("format", "")).lower()
        if fmt not in FORMATS:
            raise DataError(f"{yaml_path}: format: {doc.get('format')!r}; fix: set 'format' to one of {', '.join(FORMATS)}")
        root = Path(doc.get("path") or ".")
        if not root.is_absolute():
            root = yaml_path.parent / root
        names = doc.get("names")
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except ValueError:
                raise DataError(f"{yaml_path}: names: keys must be class indices 0..N-1; fix: use a list of names") from None
            if keys != list(range(len(keys))):
                raise DataError(f"{yaml_path}: names: indices {keys} are not 0..{len(keys) - 1}; fix: number the classes 0..N-1")
            names = [str(names[k] if k in names else names[str(k)]) for k in keys]
        elif names is not None:
            if not isinstance(names, list) or not names:
                raise DataError(f"{yaml_path}: names: expected a list of class names; fix: names: [cat, dog]")
            names = [str(n) for n in names]
            if len(set(names)) != len(names):
                raise DataError(f"{yaml_path}: names: duplicate class names in {names}; fix: make every name unique")
        splits = {}
        for split in ("train", "val", "test"):
            entry = doc.get(split)
            if entry is None:
                continue
            if isinstance(entry, str):
                entry = {"images": entry}
            if not isinstance(entry, dict) or not entry.get("images"):
                raise DataError(f"{yaml_path}: {split}: needs 'images' (and 'annotations'); fix: {split}: {{images: ..., annotations: ...}}")
            ann = entry.get("annotations")
            if ann is None and fmt != "yolo":
                raise DataError(f"{yaml_path}: {split}: 'annotations' missing; fix: give the {'JSON file' if fmt == 'coco' else 'XML folder'}")
            splits[split] = SplitSpec(
                images=root / entry["images"],
                annotations=root / ann if ann else None,
                list=root / entry["list"] if entry.get("list") else None,
            )
        if not splits:
            raise DataError(f"{yaml_path}: no train/val splits; fix: add 'train:' and 'val:' sections")
        return cls(path=yaml_path, format=fmt, names=names, splits=splits)


def load_dataset(
    source: str | Path,
    split: str = "train",
    *,
    images: str | Path | None = None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    verify_images: bool = False,
    report: DataReport | None = None,
) -> DetectionData:
    """Read one split of a dataset: ``source`` is a dataset YAML or a COCO JSON.

    ``images`` overrides the image folder. ``class_names`` and ``category_ids`` impose a
    class list (pass the training split's to the validation split so labels agree).
    ``verify_images`` decodes every image now (slow, for ``data check``); otherwise files
    are only checked to exist and corrupt ones are caught when loaded. Problems are in the
    returned ``.report``; a split with no usable image raises DataError.
    """
    source = Path(source)
    if source.suffix.lower() == ".json":
        from .coco import read_coco

        return read_coco(source, images, class_names=class_names, category_ids=category_ids,
                         verify_images=verify_images, report=report)
    if source.suffix.lower() not in (".yaml", ".yml"):
        raise DataError(f"{source}: unknown dataset file type; fix: give a dataset .yaml or a COCO .json")
    spec = DatasetSpec.from_yaml(source)
    if split not in spec.splits:
        raise DataError(f"{source}: no '{split}' split (has {', '.join(spec.splits)}); fix: add a '{split}:' section")
    s = spec.splits[split]
    images_dir = Path(images) if images is not None else s.images
    names = class_names if class_names is not None else spec.names
    if spec.format == "coco":
        from .coco import read_coco

        return read_coco(s.annotations, images_dir, class_names=names, category_ids=category_ids,
                         verify_images=verify_images, report=report)
    if spec.format == "voc":
        from .voc import read_voc

        return read_voc(s.annotations, images_dir, class_names=names, ids_file=s.list,
                        verify_images=verify_images, report=report)
    from .yolo import read_yolo

    if names is None:
        raise DataError(f"{source}: YOLO datasets need class names; fix: add 'names: [...]' to the YAML")
    return read_yolo(images_dir, s.annotations, class_names=names, verify_images=verify_images, report=report)
