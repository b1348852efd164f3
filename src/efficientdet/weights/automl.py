"""google/automl EfficientDet checkpoints: the variable names of the official Keras model and
their mapping onto our state-dict layout.

Official names (``tf2/efficientdet_keras.py``, the same as in the TF1 checkpoints Google released)::

    efficientnet-b0/stem/conv2d/kernel                       backbone.conv_stem.weight
    efficientnet-b0/blocks_{k}/{conv2d,depthwise_conv2d,se/conv2d,...}
                                                             backbone.blocks.{stage}.{block}.*
    resample_p6/{conv2d,bn}/...                              fpn.resample.3.conv.{conv,bn}.*
    fpn_cells/cell_{c}/fnode{n}/WSM, WSM_1, ...              fpn.cell.{c}.fnode.{n}.combine.edge_weights
    fpn_cells/cell_{c}/fnode{n}/resample_{i}_{id}_{L+n}/...  fpn.cell.{c}.fnode.{n}.combine.resample.{id}.conv.*
    fpn_cells/cell_{c}/fnode{n}/op_after_combine{L+n}/...    fpn.cell.{c}.fnode.{n}.after_combine.conv.*
    class_net/class-{i}/{depthwise,pointwise}_kernel, bias   class_net.conv_rep.{i}.{conv_dw,conv_pw}.*
    class_net/class-{i}-bn-{level}/...                       class_net.bn_rep.{i}.{level - 3}.bn.*
    class_net/class-predict/...                              class_net.predict.*   (box_net likewise)

Tensors: TF kernels are (kh, kw, in, out), depthwise (kh, kw, C, 1); ours (out, in, kh, kw) and
(C, 1, kh, kw). Batch norm gamma/beta/moving_mean/moving_variance are weight/bias/running_mean/
running_var. The fast-attention fusion stores one scalar per input (``WSM``, ``WSM_1``...), ours
one vector.

Reading a checkpoint (:func:`read_automl_checkpoint`) needs TensorFlow (``pip install
'efficientdet[automl]'``); the mapping itself is plain Python and numpy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from ..nn.bifpn import bifpn_nodes

EMA_SUFFIX = "/ExponentialMovingAverage"
_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
# our layer name -> official, per block kind (ds: no expansion conv; ir: inverted residual)
_DS = {
    "conv_dw": "depthwise_conv2d",
    "bn1": "tpu_batch_normalization",
    "se.conv_reduce": "se/conv2d",
    "se.conv_expand": "se/conv2d_1",
    "conv_pw": "conv2d",
    "bn2": "tpu_batch_normalization_1",
}
_IR = {
    "conv_pw": "conv2d",
    "bn1": "tpu_batch_normalization",
    "conv_dw": "depthwise_conv2d",
    "bn2": "tpu_batch_normalization_1",
    "se.conv_reduce": "se/conv2d",
    "se.conv_expand": "se/conv2d_1",
    "conv_pwl": "conv2d_1",
    "bn3": "tpu_batch_normalization_2",
}


def _param(layer: str, param: str, depthwise: bool = False) -> str:
    """Official variable name of ``param`` (weight/bias/BN stats) of a layer scope."""
    if param in _BN and ("bn" in layer.rsplit("/", 1)[-1] or "batch_normalization" in layer):
        return f"{layer}/{_BN[param]}"
    if param == "weight":
        return f"{layer}/{'depthwise_kernel' if depthwise else 'kernel'}"
    return f"{layer}/{param}"


def automl_names(model: nn.Module) -> dict[str, str]:
    """{our state-dict key: official variable name} for every parameter and BN statistic of an
    ``EfficientDet`` (``num_batches_tracked`` has no official counterpart and is left out)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "backbone"):
        raise WeightsError(
            f"source='automl': google/automl checkpoints load into an EfficientDet, not a {type(model).__name__}; "
            "fix: build the detector with create_model(NAME)"
        )
    state = model.state_dict()
    backbone = cfg.backbone.replace("_", "-")
    num_levels = cfg.max_level - cfg.min_level + 1
    nodes = bifpn_nodes(cfg.min_level, cfg.max_level)
    stage_sizes = [
        len(list(stage.children())) for stage in model.get_submodule("backbone.blocks").children()
    ]
    first_block = np.cumsum([0, *stage_sizes]).tolist()
    names: dict[str, str] = {}
    for key in state:
        if key.endswith("num_batches_tracked"):
            continue
        names[key] = _official_name(
            key, state, backbone, num_levels, nodes, first_block, cfg.min_level
        )
    return names


def _official_name(key, state, backbone, num_levels, nodes, first_block, min_level) -> str:
    layer, _, param = key.rpartition(".")
    m = re.fullmatch(r"backbone\.(conv_stem|bn1)", layer)
    if m:
        return _param(
            f"{backbone}/stem/{'conv2d' if m.group(1) == 'conv_stem' else 'tpu_batch_normalization'}",
            param,
        )
    m = re.fullmatch(r"backbone\.blocks\.(\d+)\.(\d+)\.(.+)", layer)
    if m:
        stage, block, name = int(m.group(1)), int(m.group(2)), m.group(3)
        kinds = _IR if f"backbone.blocks.{stage}.{block}.conv_pwl.weight" in state else _DS
        scope = f"{backbone}/blocks_{first_block[stage] + block}/{kinds[name]}"
        return _param(scope, param, depthwise=name == "conv_dw")
    m = re.fullmatch(r"fpn\.resample\.(\d+)\.conv\.(conv|bn)", layer)
    if m:
        return _param(
            f"resample_p{int(m.group(1)) + min_level}/{'conv2d' if m.group(2) == 'conv' else 'bn'}",
            param,
        )
    m = re.fullmatch(
        r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)", layer if param != "edge_weights" else key
    )
    if m:
        cell, n, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        node = f"fpn_cells/cell_{cell}/fnode{n}"
        if rest == "combine.edge_weights":
            return f"{node}/WSM"  # one scalar per input: WSM, WSM_1, ... (see _convert)
        r = re.fullmatch(r"combine\.resample\.(\d+)\.conv\.(conv|bn)", rest)
        if r:
            input_id = int(r.group(1))
            scope = f"{node}/resample_{nodes[n].inputs.index(input_id)}_{input_id}_{num_levels + n}"
            return _param(f"{scope}/{'conv2d' if r.group(2) == 'conv' else 'bn'}", param)
        r = re.fullmatch(r"after_combine\.conv\.(conv_dw|conv_pw|bn)", rest)
        if r:
            scope = f"{node}/op_after_combine{num_levels + n}"
            if r.group(1) == "bn":
                return _param(f"{scope}/bn", param)
            return f"{scope}/conv/{'depthwise_kernel' if r.group(1) == 'conv_dw' else 'pointwise_kernel' if param == 'weight' else 'bias'}"
    m = re.fullmatch(
        r"(class|box)_net\.(conv_rep\.(\d+)|predict|bn_rep\.(\d+)\.(\d+)\.bn)\.?(conv_dw|conv_pw)?",
        layer,
    )
    if m:
        net, prefix = f"{m.group(1)}_net", m.group(1)
        if m.group(4) is not None:  # bn_rep.{repeat}.{level index}.bn
            return _param(f"{net}/{prefix}-{m.group(4)}-bn-{int(m.group(5)) + min_level}", param)
        scope = f"{net}/{prefix}-{m.group(3) if m.group(3) is not None else 'predict'}"
        if m.group(6) == "conv_dw":
            return f"{scope}/depthwise_kernel"
        return f"{scope}/{'pointwise_kernel' if param == 'weight' else 'bias'}"
    raise WeightsError(
        f"{key}: this model has a layer with no google/automl counterpart; fix: report it as a bug"
    )


def _convert(
    name: str, variables: dict[str, np.ndarray], like: torch.Tensor
) -> torch.Tensor | None:
    """The official variable(s) for ``name`` as a tensor laid out like ``like``; None if absent."""
    if name.endswith("/WSM"):  # fusion weights: WSM, WSM_1, ... -> one vector
        parts = [name] + [f"{name}_{i}" for i in range(1, like.numel())]
        if not all(p in variables for p in parts):
            return None
        value = np.stack([np.asarray(variables[p]).reshape(()) for p in parts])
    else:
        if name not in variables:
            return None
        value = np.asarray(variables[name])
        if (
            value.ndim == 4
        ):  # (kh, kw, in, out) -> (out, in, kh, kw); depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)
            value = (
                value.transpose(2, 3, 0, 1)
                if name.endswith("depthwise_kernel")
                else value.transpose(3, 2, 0, 1)
            )
    return torch.from_numpy(np.ascontiguousarray(value))


_NETWORK_SCOPES = ("efficientnet-", "resample_p", "fpn_cells/", "class_net/", "box_net/")
_PARAM_NAMES = re.compile(
    r"(kernel|depthwise_kernel|pointwise_kernel|bias|gamma|beta|moving_mean|moving_variance|WSM(_\d+)?)"
)


def from_automl(
    variables: dict[str, np.ndarray], model: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Map official variables {name: array} onto ``model`` (an ``EfficientDet``).

    Returns (our state dict of the variables found, the network variables this model has no
    place for, the number of other variables ignored: optimizer slots, step counters). Keys of
    the model with no variable are simply absent from the state (the loader counts them).
    """
    expected = model.state_dict()
    state, used = {}, set()
    for key, name in automl_names(model).items():
        value = _convert(name, variables, expected[key])
        if value is None:
            continue
        state[key] = value
        used.update(
            [name]
            if not name.endswith("/WSM")
            else [name] + [f"{name}_{i}" for i in range(1, value.numel())]
        )
    unexpected, ignored = [], 0
    for name in variables:
        if name in used:
            continue
        if name.startswith(_NETWORK_SCOPES) and _PARAM_NAMES.fullmatch(name.rsplit("/", 1)[-1]):
            unexpected.append(name)
        else:
            ignored += 1
    return state, unexpected, ignored


def to_automl(model: nn.Module) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_automl`: ``model``'s weights as {official variable name: array}
    in TF layouts (to assign to the official Keras model, or to write a TF checkpoint)."""
    state = model.state_dict()
    out: dict[str, np.ndarray] = {}
    for key, name in automl_names(model).items():
        value = state[key].detach().cpu().numpy()
        if name.endswith("/WSM"):  # one vector -> WSM, WSM_1, ... scalars
            for i, v in enumerate(value):
                out[name if i == 0 else f"{name}_{i}"] = np.asarray(v)
        elif (
            value.ndim == 4
        ):  # (out, in, kh, kw) -> (kh, kw, in, out); (C, 1, kh, kw) -> (kh, kw, C, 1)
            out[name] = (
                value.transpose(2, 3, 0, 1)
                if name.endswith("depthwise_kernel")
                else value.transpose(2, 3, 1, 0)
            )
        else:
            out[name] = value
    return out


# ----------------------------------------------------------------------------- reading files
def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        raise WeightsError(
            "source='automl': reading google/automl checkpoints needs TensorFlow; fix: pip install 'efficientdet[automl]'"
        ) from None
    return tf


def read_automl_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """{official variable name: array} from a google/automl checkpoint, and notes on what was used.

    ``path``: a TF checkpoint prefix (``.../model.ckpt``, ``ckpt-10``, the released
    ``efficientdet-d0/model``), a folder holding one (its latest), or a Keras ``.h5`` weights
    file. Name-based (TF1) checkpoints use the ``ExponentialMovingAverage`` of a variable when
    present, as the official ``util_keras.restore_ckpt`` does; object-based (TF2 Keras)
    checkpoints are mapped through their object graph's variable names.
    """
    path = Path(path)
    if path.suffix in (".h5", ".hdf5", ".keras"):
        return _read_h5(path)
    tf = _tensorflow()
    prefix = os.fspath(path)
    if path.is_dir():
        prefix = tf.train.latest_checkpoint(prefix)
        if prefix is None:
            raise WeightsError(
                f"{path}: folder holds no TF checkpoint (no 'checkpoint' file); fix: give the checkpoint prefix"
            )
    elif not Path(prefix + ".index").is_file():
        raise WeightsError(
            f"{path}: not a TF checkpoint ({Path(prefix).name}.index not found); fix: give the prefix, e.g. "
            ".../efficientdet-d0/model for model.index and model.data-*"
        )
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except Exception as exc:  # TF raises DataLossError / NotFoundError / OpError for broken files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise WeightsError(
            f"{path}: not a readable TF checkpoint ({first}); fix: check that the download is complete"
        ) from None
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in shapes:
        return _read_object_based(tf, reader)
    names = [k for k in shapes if not k.endswith(EMA_SUFFIX)]
    with_ema = [k for k in names if k + EMA_SUFFIX in shapes]
    variables = {
        k: reader.get_tensor(k + EMA_SUFFIX if k + EMA_SUFFIX in shapes else k) for k in names
    }
    notes = (
        [f"{len(with_ema)} variables read from their exponential moving averages"]
        if with_ema
        else []
    )
    return variables, notes


def _read_object_based(tf, reader) -> tuple[dict[str, np.ndarray], list[str]]:
    from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

    graph = TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    variables: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        for attr in node.attributes:
            if attr.name == "VARIABLE_VALUE" and attr.full_name:
                variables.setdefault(attr.full_name, reader.get_tensor(attr.checkpoint_key))
    return variables, []


def _read_h5(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; fix: check the path")
    _tensorflow()
    import h5py  # a TensorFlow dependency

    variables = {}
    try:
        with h5py.File(path, "r") as f:
            root = (
                f["model_weights"] if "model_weights" in f else f
            )  # model.save() vs model.save_weights()
            for layer in root.attrs.get("layer_names", []):
                group = root[layer.decode() if isinstance(layer, bytes) else layer]
                for weight in group.attrs.get("weight_names", []):
                    weight = weight.decode() if isinstance(weight, bytes) else weight
                    variables[weight.removesuffix(":0")] = np.asarray(group[weight])
    except OSError as exc:
        raise WeightsError(
            f"{path}: not a readable Keras HDF5 file ({exc}); fix: check that the file is complete"
        ) from None
    if not variables:
        raise WeightsError(
            f"{path}: holds no Keras layer weights; fix: save it with model.save_weights('....h5')"
        )
    return variables, []
