"""Datasets: readers (COCO, VOC, YOLO), problem report, transforms, torch Dataset and loader.

Typical use::

    from efficientdet.data import load_dataset, DetectionDataset, create_loader
    train = load_dataset("data.yaml", split="train")
    val = load_dataset("data.yaml", split="val", class_names=train.class_names, category_ids=train.category_ids)
    print(train.report.summary())
    ds = DetectionDataset(train, cfg.image_size, cfg.mean, cfg.std, train=True)
    loader = create_loader(ds, batch_size=8, shuffle=True, num_workers=2, seed=0)

Names are imported lazily, so ``import efficientdet.data`` does no work.
"""

from importlib import import_module

_EXPORTS = {
    "ImageRecord": "records",
    "DetectionData": "records",
    "DataReport": "report",
    "DataProblem": "report",
    "PROBLEM_KINDS": "report",
    "load_dataset": "spec",
    "DatasetSpec": "spec",
    "read_coco": "coco",
    "records_to_coco": "coco",
    "detections_to_coco": "coco",
    "read_voc": "voc",
    "read_yolo": "yolo",
    "AugmentConfig": "transforms",
    "load_image": "transforms",
    "letterbox_scale": "transforms",
    "unletterbox_boxes": "transforms",
    "DetectionDataset": "dataset",
    "collate": "loader",
    "create_loader": "loader",
    "write_synthetic_dataset": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'efficientdet.data' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
