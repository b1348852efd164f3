"""EfficientDet D0-D7x and Lite0-Lite4 in plain PyTorch.

Public API (imported lazily, so ``import efficientdet`` does no work)::

    import efficientdet as ed
    ed.list_models()
    model = ed.create_model("efficientdet_d0", num_classes=90, image_size=(512, 512))
    class_outputs, box_outputs = model(images)   # lists over levels P3..P7
    ed.load_weights(model, "file.pth", source="auto")
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "list_models": "efficientdet.config",
    "get_model_config": "efficientdet.config",
    "ModelConfig": "efficientdet.config",
    "AnchorConfig": "efficientdet.config",
    "LossConfig": "efficientdet.config",
    "NMSConfig": "efficientdet.config",
    "EfficientDetError": "efficientdet.errors",
    "create_model": "efficientdet.factory",
    "create_backbone": "efficientdet.factory",
    "load_weights": "efficientdet.weights",
    "EfficientDet": "efficientdet.nn.model",
    "Detector": "efficientdet.deploy.detector",
    "keep_freed_memory": "efficientdet.runtime",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'efficientdet' has no attribute {name!r}")
    return getattr(import_module(module), name)
