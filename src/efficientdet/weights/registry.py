"""Pretrained COCO weights: the effdet release files, downloaded once into the torch hub cache.

Each file name carries the first 8 hex digits of its SHA-256, which is checked after download.
They are effdet's ports of the official releases, run (as effdet does) with the "official-v1"
anchor aspect ratios, the default (see ``config.ASPECT_RATIO_SETS``): the D0-D7x releases were
trained with them; the Lite releases (2021) post-date the official switch to "official-v2",
which was not re-checked here. google/automl checkpoints themselves
load with ``load_weights(model, path, source="automl")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WeightsError

_RELEASE = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"


@dataclass(frozen=True)
class PretrainedFile:
    url: str
    source: str = "effdet"  # layout of the file, for load_weights
    num_classes: int = 90

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        return Path(self.file_name).stem.rsplit("-", 1)[-1]


COCO_WEIGHTS: dict[str, PretrainedFile] = {
    name: PretrainedFile(_RELEASE + file)
    for name, file in {
        "efficientdet_d0": "tf_efficientdet_d0_34-f153e0cf.pth",
        "efficientdet_d1": "tf_efficientdet_d1_40-a30f94af.pth",
        "efficientdet_d2": "tf_efficientdet_d2_43-8107aa99.pth",
        "efficientdet_d3": "tf_efficientdet_d3_47-0b525f35.pth",
        "efficientdet_d4": "tf_efficientdet_d4_49-f56376d9.pth",
        "efficientdet_d5": "tf_efficientdet_d5_51-c79f9be6.pth",
        "efficientdet_d6": "tf_efficientdet_d6_52-4eda3773.pth",
        "efficientdet_d7": "tf_efficientdet_d7_53-6d1d7a95.pth",
        "efficientdet_d7x": "tf_efficientdet_d7x-f390b87c.pth",
        "efficientdet_lite0": "tf_efficientdet_lite0-dfacfc78.pth",
        "efficientdet_lite1": "tf_efficientdet_lite1-6dc7ab30.pth",
        "efficientdet_lite2": "tf_efficientdet_lite2-86c5d55b.pth",
        "efficientdet_lite3": "tf_efficientdet_lite3-506852cb.pth",
        "efficientdet_lite3x": "tf_efficientdet_lite3x-8404c57b.pth",
        "efficientdet_lite4": "tf_efficientdet_lite4-391ddabc.pth",
    }.items()
}


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_pretrained(model_name: str, progress: bool = True) -> tuple[Path, PretrainedFile]:
    """Path of the COCO weights for ``model_name``, downloading (with a hash check) if not cached."""
    entry = COCO_WEIGHTS.get(model_name)
    if entry is None:
        raise WeightsError(
            f"no pretrained COCO weights are registered for {model_name}; pass weights=PATH or weights=None"
        )
    target = cache_dir() / entry.file_name
    if target.is_file():
        return target, entry
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(
            entry.url, os.fspath(target), hash_prefix=entry.sha256_prefix, progress=progress
        )
    except RuntimeError as exc:  # hash mismatch
        raise WeightsError(
            f"{entry.url}: downloaded file failed its SHA-256 check ({exc}); delete {target} and retry"
        ) from None
    except OSError as exc:  # offline, DNS, HTTP errors
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"cannot download {entry.url} ({reason}); download it by hand and pass weights=PATH "
            f"(or place it at {target})"
        ) from None
    return target, entry
