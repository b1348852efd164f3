"""Structured report of dataset problems, shared by the readers, the trainer and ``data check``.

Every problem is recorded once, with the file it came from, the item inside that file
(``image 12``, ``annotation 7``, ``line 3``), what is wrong and what the loader did about it
(skipped image, dropped box, clipped box, substituted image). Loading always goes on;
only a dataset with no usable image at all raises :class:`~efficientdet.errors.DataError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

# kind -> (one-line description, default action, default fix). The table is the vocabulary of
# problems; every reader, the dataset and the doctor report through it.
PROBLEM_KINDS: dict[str, tuple[str, str, str]] = {
    "missing_image": (
        "image file not found",
        "skipped image",
        "put the image in the image folder or remove its entry",
    ),
    "corrupt_image": (
        "image cannot be opened or decoded (corrupt or truncated)",
        "skipped image",
        "replace the file with a readable image or remove its entry",
    ),
    "size_mismatch": (
        "image file size differs from the size in the annotations",
        "image resized to the annotated size",
        "correct width/height in the annotations (or re-export them for this image)",
    ),
    "duplicate_image_id": ("image id used twice", "skipped image", "give every image a unique id"),
    "bad_image_entry": (
        "image entry without a usable id, file name or size",
        "skipped image",
        "give the entry an integer 'id' and a 'file_name' string",
    ),
    "bad_category": (
        "category entry without a usable id or name",
        "skipped category",
        "give every category an integer 'id' and a 'name' string",
    ),
    "unreadable_annotations": (
        "annotation file cannot be parsed",
        "skipped file",
        "re-export the file (it is truncated, not UTF-8 or not valid XML)",
    ),
    "empty_annotations": (
        "annotation list is empty",
        "images kept as background",
        "add the annotations, or ignore this if the images are background",
    ),
    "bad_annotation": (
        "annotation entry or label line cannot be parsed",
        "dropped box",
        "write the box as 4 numbers with an integer class",
    ),
    "bad_iscrowd": (
        "'iscrowd' is not 0/1 (or true/false)",
        "kept as a normal box (iscrowd 0)",
        "set iscrowd to 0 or 1",
    ),
    "nan_box": ("box coordinate is NaN or infinite", "dropped box", "write finite box coordinates"),
    "bad_box_size": (
        "box has zero or negative width/height",
        "dropped box",
        "check the box format (COCO: x, y, width, height; VOC: xmin < xmax)",
    ),
    "box_outside": (
        "box lies fully outside the image",
        "dropped box",
        "check the box coordinates and the image size",
    ),
    "box_clipped": (
        "box extends past the image border",
        "clipped box",
        "clip the box to the image",
    ),
    "box_too_small": (
        "box too small to train on at the model input size",
        "dropped in training",
        "train at a larger --image-size, or remove boxes this small",
    ),
    "unknown_category": (
        "category id / class index / class name not in the class list",
        "dropped box",
        "add the class to the categories/names, or fix the box's class",
    ),
    "orphan_annotation": (
        "annotation refers to an image id that does not exist",
        "dropped box",
        "add the image entry or fix the annotation's image_id",
    ),
    "orphan_label": (
        "label file without an image",
        "ignored file",
        "add the image (same name, an image extension) or delete the label file",
    ),
    "misplaced_label": (
        "label file found away from where the reader looks for it",
        "image read as background",
        "move the label file to the expected path",
    ),
}


@dataclass(frozen=True)
class DataProblem:
    """One problem, as data: ``kind`` (a PROBLEM_KINDS key), the ``file`` it came from, the ``item``
    inside it (``line 3``, ``annotation id 7 (image id 2, a.jpg)``), what is wrong (``message``),
    what loading did (``action``), how to repair it (``fix``), and the offending ``value`` as
    written (e.g. the unknown category id) for tools that group problems, such as the doctor."""

    kind: str
    file: str
    item: str
    message: str
    action: str
    fix: str = ""
    value: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.item}: {self.message} -> {self.action}"


@dataclass
class DataReport:
    """Problems found while reading a dataset, plus counts of what was kept.

    ``stats`` holds plain counts: images_listed, images_used, boxes_listed, boxes_used,
    images_without_boxes (background images; a count, not a problem).
    """

    problems: list[DataProblem] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def add(
        self,
        kind: str,
        file,
        item: str,
        message: str | None = None,
        action: str | None = None,
        fix: str | None = None,
        value=None,
    ) -> DataProblem:
        """Record a problem; ``message``/``action``/``fix`` default to the PROBLEM_KINDS text."""
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}: add it to PROBLEM_KINDS")
        description, default_action, default_fix = PROBLEM_KINDS[kind]
        problem = DataProblem(
            kind,
            str(file),
            str(item),
            message or description,
            action or default_action,
            fix or default_fix,
            "" if value is None else str(value),
        )
        self.problems.append(problem)
        return problem

    def count(self, kind: str | None = None) -> int:
        """Number of problems of ``kind`` (all problems when None)."""
        if kind is None:
            return len(self.problems)
        return sum(1 for p in self.problems if p.kind == kind)

    def counts(self) -> dict[str, int]:
        """Problem counts by kind, in PROBLEM_KINDS order."""
        c = Counter(p.kind for p in self.problems)
        order = list(PROBLEM_KINDS) + sorted(set(c) - set(PROBLEM_KINDS))
        return {k: c[k] for k in order if c[k]}

    def of_kind(self, kind: str) -> list[DataProblem]:
        return [p for p in self.problems if p.kind == kind]

    def extend(self, other: DataReport) -> DataReport:
        """Append another report's problems and add its stats (in place); returns self."""
        self.problems.extend(other.problems)
        self.stats.update(other.stats)
        return self

    def __len__(self) -> int:
        return len(self.problems)

    def __bool__(self) -> bool:  # a report object is always truthy, even when empty
        return True

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_examples: int = 3, title: str = "dataset report") -> str:
        """A printable table: stats, problem counts by kind with action, a few examples each."""
        lines = [title]
        s = self.stats
        if "images_listed" in s:
            lines.append(
                f"  images: {s['images_used']} used of {s['images_listed']} listed"
                f" ({s['images_without_boxes']} without boxes)"
                f"   boxes: {s['boxes_used']} used of {s['boxes_listed']} listed"
            )
        other = {
            k: v
            for k, v in s.items()
            if k
            not in (
                "images_listed",
                "images_used",
                "boxes_listed",
                "boxes_used",
                "images_without_boxes",
            )
        }
        for k, v in other.items():
            lines.append(f"  {k}: {v}")
        counts = self.counts()
        if not counts:
            lines.append("  no problems found")
            return "\n".join(lines)
        width = max(len(k) for k in counts)
        lines.append(f"  {'problem'.ljust(width)}  {'count':>7}  action")
        for kind, n in counts.items():
            examples = self.of_kind(kind)
            actions = sorted({p.action for p in examples})
            lines.append(f"  {kind.ljust(width)}  {n:>7}  {', '.join(actions)}")
            for p in examples[:max_examples]:
                lines.append(f"      {p.file}: {p.item}: {p.message}")
            if n > max_examples:
                lines.append(f"      ... {n - max_examples} more")
            lines.append(f"      fix: {examples[0].fix}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready: {"stats": {...}, "counts": {kind: n}, "problems": [{kind, file, item, message, action, fix, value}]}."""
        return {
            "stats": dict(self.stats),
            "counts": self.counts(),
            "problems": [asdict(p) for p in self.problems],
        }
