"""EfficientDet D0-D7x and Lite0-Lite4 in plain PyTorch.

Public API (imported lazily, so ``import efficientdet`` does no work)::

    import efficientdet as ed
    ed.list_models()
    model = ed.create_model("efficientdet_d0", num_classes=90, image_size=(512, 512))
    class_outputs, box_outputs = model(images)   # lists over levels P3..P7
    ed.load_weights(model, "file.pth", source="auto")
    result = ed.train(ed.TrainConfig(data="data.yaml", model="efficientdet_lite0", epochs=20))
    result = ed.train(cfg, callbacks=[MyCallback()])   # class MyCallback(ed.Callback): on_step_end...
    detector = ed.Detector("runs/train/1/best.pt"); detections = detector("photo.jpg")
    ed.export_onnx(ed.load_model("best.pt")[0], "model.onnx")   # also export_torchscript,
    # export_openvino, export_tflite; int8 calibration images: ed.calibration_set(...)
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
    "load_model": "efficientdet.factory",
    "create_backbone": "efficientdet.factory",
    "load_weights": "efficientdet.weights",
    "EfficientDet": "efficientdet.nn.model",
    "Detector": "efficientdet.deploy.detector",
    "Detections": "efficientdet.deploy.detector",
    "export_onnx": "efficientdet.deploy.export",
    "export_torchscript": "efficientdet.deploy.export",
    "export_openvino": "efficientdet.deploy.export_openvino",
    "export_tflite": "efficientdet.deploy.export_tflite",
    "calibration_set": "efficientdet.deploy.calibration",
    "train": "efficientdet.engine.trainer",
    "TrainConfig": "efficientdet.engine.config",
    "Callback": "efficientdet.engine.callbacks",
    "evaluate": "efficientdet.engine.evaluator",
    "load_dataset": "efficientdet.data",
    "keep_freed_memory": "efficientdet.runtime",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'efficientdet' has no attribute {name!r}")
    return getattr(import_module(module), name)
