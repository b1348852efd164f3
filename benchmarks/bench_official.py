"""Side by side with the official google/automl EfficientDet (TF2/Keras): network, anchors, box
decoding and detections, with the same random weights mapped by name.

Runs in its own environment (TensorFlow 2.15 CPU next to torch; see benchmarks/official/):

    bash benchmarks/official/setup_official.sh
    git clone https://github.com/google/automl /path/to/automl    # verified at 6a54c87 (2025-03-01)
    benchmarks/official/.venv/bin/python benchmarks/bench_official.py --automl /path/to/automl
    benchmarks/official/.venv/bin/python benchmarks/bench_official.py --automl ... --models d0@512 lite0 --json out.json

Per model: the official Keras ``EfficientDetNet`` is built from its own unmodified code (float64
through ``tf.keras.backend.set_floatx``, the only change), given random weights (batch-norm
statistics calibrated on random inputs so activations stay in range), and mapped onto ours with
``load_weights(model, variables, source="automl")``. Reported:

- input normalisation: the official ``mean_rgb``/``stddev_rgb`` against our config's;
- per pyramid level, max |official - ours| of the class logits and box deltas, in float64 and
  float32 (relative to the largest output magnitude of that level);
- anchors: our ``official-v2`` set against ``tf2/anchors.Anchors`` with the current official
  ratios, our default ``official-v1`` against the same class given ratios (1,1) (1.4,0.7) (0.7,1.4),
  and how far the two sets lie apart;
- box decoding: ``anchors.decode_box_outputs`` against ours on the official outputs;
- detections: ``postprocess.postprocess_per_class`` (hard NMS at 0.5, and the official default
  Gaussian soft-NMS) against our ``postprocess`` on the same outputs, both with the official
  candidate rule (each anchor's best class) and with our shipped default (effdet's top-5000
  over anchors x classes).

The automl source is not part of this repository; the script only imports it from ``--automl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

VERIFIED_COMMIT = "6a54c8741e7c3265d4547c4f35f47a0391122dc5"
DEFAULT_MODELS = ["d0@512", "d0@333x517", "lite0", "d3@384x640", "lite3x@333x517"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--automl", required=True, help="google/automl checkout (the folder holding efficientdet/)"
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        help="NAME or NAME@S or NAME@HxW (default: %(default)s)",
    )
    p.add_argument("--batch", type=int, default=2, help="images per forward pass (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def import_official(automl: str):
    root = Path(automl).resolve()
    src = root / "efficientdet" if (root / "efficientdet" / "hparams_config.py").is_file() else root
    if not (src / "hparams_config.py").is_file():
        sys.exit(
            f"error: {automl}: no efficientdet/hparams_config.py; fix: give the google/automl checkout"
        )
    sys.path.insert(0, str(src))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    import hparams_config
    from tf2 import anchors, efficientdet_keras, postprocess

    return tf, hparams_config, efficientdet_keras, anchors, postprocess


# ----------------------------------------------------------------------------- official side
def _upsample2d_without_float32(self, inputs, target_height, target_width):
    """``ResampleFeatureMap._upsample2d`` without its round trip through float32 (nearest
    neighbour only copies values): the one change for the float64 comparison."""
    import tensorflow as tf

    if self.data_format == "channels_first":
        inputs = tf.transpose(inputs, [0, 2, 3, 1])
    resized = tf.compat.v1.image.resize_nearest_neighbor(inputs, [target_height, target_width])
    return tf.transpose(resized, [0, 3, 1, 2]) if self.data_format == "channels_first" else resized


def build_official(tf, hparams_config, efficientdet_keras, name, hw, dtype):
    tf.keras.backend.clear_session()  # fresh layer-name counters: variable names as in a checkpoint
    tf.keras.backend.set_floatx(dtype)
    resample = efficientdet_keras.ResampleFeatureMap
    if not hasattr(resample, "_official_upsample2d"):
        resample._official_upsample2d = resample._upsample2d
    resample._upsample2d = (
        _upsample2d_without_float32 if dtype == "float64" else resample._official_upsample2d
    )
    cfg = hparams_config.get_efficientdet_config(name.replace("efficientdet_", "efficientdet-"))
    cfg.image_size = hw
    model = efficientdet_keras.EfficientDetNet(config=cfg)
    model.build((None, *hw, 3))
    return model, cfg


def randomize(tf, model, rng, calib_input):
    """Random conv weights N(0, 1/fan_in), biases, BN gamma/beta, fusion weights; BN statistics
    calibrated on ``calib_input`` (one training-mode pass with momentum 0); prediction layers
    scaled so class logits spread around -2.5 and box deltas about 0.25."""
    for v in model.weights:
        leaf, shape = v.name.split("/")[-1].split(":")[0], tuple(v.shape)
        if leaf in ("kernel", "pointwise_kernel"):
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        elif leaf == "depthwise_kernel":
            value = rng.normal(0, 1 / np.sqrt(shape[0] * shape[1]), shape)
        elif leaf == "bias":
            value = rng.normal(0, 0.05, shape)
        elif leaf == "gamma" or leaf.startswith("WSM"):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "beta":
            value = rng.normal(0, 0.1, shape)
        else:
            continue  # moving statistics: calibrated below
        v.assign(value.astype(v.dtype.as_numpy_dtype))
    bns = [m for m in model.submodules if isinstance(m, tf.keras.layers.BatchNormalization)]
    for bn in bns:
        bn.momentum = 0.0
    model(calib_input, training=True)
    for bn in bns:
        bn.momentum = 0.99
    cls_out, box_out = model(calib_input, training=False)
    for v in model.weights:
        if "class-predict" in v.name or "box-predict" in v.name:
            out = cls_out if "class" in v.name else box_out
            spread = float(np.std(np.concatenate([o.numpy().ravel() for o in out]))) or 1.0
            target = 1.5 if "class" in v.name else 0.25
            if v.name.split("/")[-1].startswith("pointwise_kernel"):
                v.assign(v.numpy() * target / spread)
            elif v.name.split("/")[-1].startswith("bias"):
                v.assign(
                    np.full(v.shape, -2.5 if "class" in v.name else 0.0, v.dtype.as_numpy_dtype)
                )


# ----------------------------------------------------------------------------- comparisons
def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def compare_levels(official, ours_nchw) -> list[dict]:
    """Per level: max |diff| and the largest magnitude, official NHWC against ours NCHW."""
    rows = []
    for o, t in zip(official, ours_nchw, strict=True):
        t = (
            t.detach().permute(0, 2, 3, 1).numpy()
        )  # (N, A*K, H, W) -> (N, H, W, A*K), the official layout
        rows.append({"max_abs_diff": max_abs(o, t), "max_abs": float(np.max(np.abs(o)))})
    return rows


def match_detections(
    off_boxes, off_scores, off_classes, ours: dict, box_tol=1e-3, score_tol=1e-5
) -> int:
    """Official detections (yxyx, score, class) found among ours (xyxy, 0-based labels), any order."""
    import torch

    if not len(off_scores) or not len(ours["scores"]):
        return 0
    ours_yxyx = ours["boxes"].double()[:, [1, 0, 3, 2]]
    box_diff = (
        (torch.as_tensor(off_boxes, dtype=torch.float64)[:, None] - ours_yxyx[None]).abs().amax(-1)
    )
    same_class = torch.as_tensor(off_classes)[:, None] == ours["labels"][None]
    score_diff = (
        torch.as_tensor(off_scores, dtype=torch.float64)[:, None] - ours["scores"].double()[None]
    ).abs()
    return int(((box_diff < box_tol) & same_class & (score_diff < score_tol)).any(1).sum())


def check_checkpoint_formats(tf, off32, x32, our_cfg, hw, rng) -> dict:
    """Load the official float32 model's weights from the files the official code writes and
    reads: Keras ``save_weights`` as .h5 and as a TF (object-based) checkpoint, and a name-based
    checkpoint with ExponentialMovingAverage shadows (the released checkpoints' layout) restored
    by the official ``util_keras.restore_ckpt``. Max |official - ours| over all outputs."""
    import tempfile

    import torch
    from tf2 import util_keras

    import efficientdet as ed

    def ours_outputs(path):
        model = ed.create_model(our_cfg.name, image_size=hw, aspect_ratios="official-v2")
        ed.load_weights(model, path, source="automl")
        with torch.no_grad():
            cls, box = model.eval()(torch.from_numpy(x32).permute(0, 3, 1, 2).contiguous())
        return [t.permute(0, 2, 3, 1).numpy() for t in cls + box]

    def official_outputs():
        cls, box = off32(x32, training=False)
        return [t.numpy() for t in cls + box]

    def worst(a, b):
        return max(max_abs(x, y) for x, y in zip(a, b, strict=True))

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = official_outputs()
        off32.save_weights(os.path.join(tmp, "weights.h5"))
        out["keras_h5"] = worst(reference, ours_outputs(os.path.join(tmp, "weights.h5")))
        off32.save_weights(os.path.join(tmp, "tf2", "ckpt"))
        out["tf2_object_based"] = worst(reference, ours_outputs(os.path.join(tmp, "tf2")))
        # name-based with EMA shadows that differ from the raw variables, plus optimizer slots and a step
        shadows = {}
        for v in off32.weights:
            name = v.name.split(":")[0]
            shadows[name] = tf.Variable(
                v.numpy() * rng.uniform(0.9, 1.1, v.shape).astype(np.float32)
            )
            shadows[name + "/ExponentialMovingAverage"] = tf.Variable(v.numpy())
            if "kernel" in name:
                shadows[name + "/Momentum"] = tf.Variable(np.zeros(v.shape, np.float32))
        shadows["global_step"] = tf.Variable(np.int64(1000))
        prefix = tf.compat.v1.train.Saver(var_list=shadows).save(
            None, os.path.join(tmp, "tf1", "model")
        )
        for v in off32.weights:  # forget the weights; the official restore must bring them back
            v.assign(np.zeros(v.shape, np.float32))
        util_keras.restore_ckpt(off32, prefix, ema_decay=0.9998, skip_mismatch=False)
        out["tf1_name_based_ema"] = worst(official_outputs(), ours_outputs(prefix))
        out["tf1_restored_equals_original"] = worst(reference, official_outputs())
    return out


def _stage(label: str, start: list) -> None:
    now = time.perf_counter()
    print(f"  {label}: {now - start[0]:.1f} s", file=sys.stderr, flush=True)
    start[0] = now


def run_model(spec, args, official_mods, rng):
    import torch

    import efficientdet as ed
    from efficientdet.config import AnchorConfig, NMSConfig, get_model_config
    from efficientdet.detection.anchors import AnchorGenerator
    from efficientdet.detection.boxes import decode_boxes, xyxy_to_yxyx
    from efficientdet.detection.layout import flatten_levels
    from efficientdet.detection.postprocess import postprocess

    tf, hparams_config, efficientdet_keras, anchors_mod, postprocess_mod = official_mods
    name, _, size = spec.partition("@")
    our_cfg = get_model_config(name, image_size=size or None)
    hw = tuple(our_cfg.image_size)
    result = {"model": our_cfg.name, "image_size": list(hw)}
    clock = [time.perf_counter()]

    # official model in float64 with random weights; ours from the same variables
    off64, off_cfg = build_official(
        tf, hparams_config, efficientdet_keras, our_cfg.name, hw, "float64"
    )
    images = rng.integers(0, 256, size=(args.batch, *hw, 3)).astype(np.float64)
    off_mean = np.asarray(off_cfg.mean_rgb, np.float64).reshape(-1)
    off_std = np.asarray(off_cfg.stddev_rgb, np.float64).reshape(-1)
    result["normalisation"] = {
        "official_mean": off_mean.tolist(),
        "official_std": off_std.tolist(),
        "ours_mean": list(our_cfg.mean),
        "ours_std": list(our_cfg.std),
        "max_abs_diff": max_abs(
            (images - off_mean) / off_std,
            (images - np.asarray(our_cfg.mean)) / np.asarray(our_cfg.std),
        ),
    }
    x64 = (images - off_mean) / off_std
    randomize(tf, off64, rng, x64)
    _stage("official float64 model built and randomised", clock)
    variables = {v.name.split(":")[0]: v.numpy() for v in off64.weights}
    # float64 before loading: load_weights casts to the model's dtype
    ours = ed.create_model(our_cfg.name, image_size=hw, aspect_ratios="official-v2").double()
    report = ed.load_weights(ours, variables, source="automl", name=f"official {our_cfg.name}")
    result["mapped_tensors"] = report.loaded
    result["official_variables"] = len(variables)
    ours64 = ours.double().eval()
    _stage("weights mapped onto ours", clock)

    off_cls64, off_box64 = off64(x64, training=False)
    off_cls64, off_box64 = [t.numpy() for t in off_cls64], [t.numpy() for t in off_box64]
    with torch.no_grad():
        cls64, box64 = ours64(torch.from_numpy(x64).permute(0, 3, 1, 2).contiguous())
    result["float64"] = {
        "class": compare_levels(off_cls64, cls64),
        "box": compare_levels(off_box64, box64),
    }
    _stage("float64 forward passes", clock)

    # float32: a fresh official model given the same values, ours cast
    off32, _ = build_official(tf, hparams_config, efficientdet_keras, our_cfg.name, hw, "float32")
    for v in off32.weights:
        v.assign(variables[v.name.split(":")[0]].astype(np.float32))
    x32 = x64.astype(np.float32)
    off_cls32, off_box32 = off32(x32, training=False)
    off_cls32, off_box32 = [t.numpy() for t in off_cls32], [t.numpy() for t in off_box32]
    ours32 = ours.float().eval()
    with torch.no_grad():
        cls32, box32 = ours32(torch.from_numpy(x32).permute(0, 3, 1, 2).contiguous())
    result["float32"] = {
        "class": compare_levels(off_cls32, cls32),
        "box": compare_levels(off_box32, box32),
    }
    tf.keras.backend.set_floatx("float32")
    _stage("float32 forward passes", clock)
    result["checkpoint_formats"] = check_checkpoint_formats(tf, off32, x32, our_cfg, hw, rng)
    _stage("checkpoint formats", clock)

    # anchors (official: yxyx float32 from float64 numpy)
    lv = (off_cfg.min_level, off_cfg.max_level, off_cfg.num_scales)
    off_v2 = anchors_mod.Anchors(*lv, off_cfg.aspect_ratios, off_cfg.anchor_scale, hw).boxes.numpy()
    off_v1 = anchors_mod.Anchors(
        *lv, [1.0, [1.4, 0.7], [0.7, 1.4]], off_cfg.anchor_scale, hw
    ).boxes.numpy()
    ours_v2 = xyxy_to_yxyx(
        AnchorGenerator(
            AnchorConfig(
                aspect_ratios="official-v2",
                anchor_scale=our_cfg.anchors.anchor_scale,
                max_level=our_cfg.max_level,
            )
        )(hw)
    ).numpy()
    ours_v1 = xyxy_to_yxyx(AnchorGenerator(our_cfg.anchors)(hw)).numpy()
    result["anchors"] = {
        "count": int(off_v2.shape[0]),
        "official_v2_vs_official": max_abs(off_v2, ours_v2),
        "official_v1_vs_official_given_v1_ratios": max_abs(off_v1, ours_v1),
        "v1_vs_v2_max_px": max_abs(off_v1, off_v2),
        "v1_vs_v2_moved_fraction": float(np.mean(np.abs(off_v1 - off_v2).max(1) > 1e-6)),
    }

    # box decoding on the official float32 outputs
    deltas = flatten_levels(
        [torch.from_numpy(b).permute(0, 3, 1, 2) for b in off_box32], 4
    )  # (N, A_all, 4)
    off_dec = anchors_mod.decode_box_outputs(
        tf.constant(deltas.numpy()), tf.constant(off_v2)
    ).numpy()
    anchors_xyxy = torch.from_numpy(off_v2[:, [1, 0, 3, 2]])
    ours_dec = xyxy_to_yxyx(decode_boxes(deltas, anchors_xyxy)).numpy()
    result["box_decoding_max_abs_diff"] = max_abs(off_dec, ours_dec)
    _stage("anchors and decoding", clock)

    # detections on the official float32 outputs
    cls_nchw = [torch.from_numpy(c).permute(0, 3, 1, 2).contiguous() for c in off_cls32]
    box_nchw = [torch.from_numpy(b).permute(0, 3, 1, 2).contiguous() for b in off_box32]
    num_anchors, total = our_cfg.anchors.num_anchors, off_v2.shape[0]
    best_only = []
    for c in cls_nchw:  # official candidate rule: each anchor's best class only
        n, _, h, w = c.shape
        c5 = c.view(n, num_anchors, -1, h, w)  # (N, A*K, H, W) -> (N, A, K, H, W)
        keep = c5 == c5.amax(2, keepdim=True)
        best_only.append(
            torch.where(keep, c5, torch.full_like(c5, float("-inf"))).view(n, -1, h, w)
        )
    params = dict(off_cfg.as_dict())
    result["detections"] = {}
    for method in ("hard", "gaussian"):
        params["nms_configs"] = {
            "method": method,
            "iou_thresh": None,
            "score_thresh": None,
            "sigma": None,
            "pyfunc": False,
            "max_nms_inputs": 0,
            "max_output_size": 100,
        }
        ob, os_, oc, ov = [
            t.numpy()
            for t in postprocess_mod.postprocess_per_class(
                params, [tf.constant(c) for c in off_cls32], [tf.constant(b) for b in off_box32]
            )
        ]
        nms = NMSConfig(max_candidates=total, method=method, max_detections=100)
        same_rule = postprocess(best_only, box_nchw, anchors_xyxy, nms, hw, clip=False)
        shipped = postprocess(cls_nchw, box_nchw, anchors_xyxy, NMSConfig(method=method), hw)
        rows = []
        for i in range(args.batch):
            k = int(ov[i])
            off = (
                ob[i, :k],
                os_[i, :k],
                oc[i, :k].astype(np.int64) - 1,
            )  # official classes are 1-based
            rows.append(
                {
                    "official": k,
                    "ours_official_rule": len(same_rule[i]["scores"]),
                    "matched_official_rule": match_detections(*off, same_rule[i]),
                    "ours_shipped": len(shipped[i]["scores"]),
                    "matched_shipped": match_detections(*off, shipped[i]),
                }
            )
        result["detections"][method] = {k: sum(r[k] for r in rows) for k in rows[0]}
        _stage(f"detections ({method} NMS)", clock)
    return result


def summary_table(results: list[dict]) -> str:
    lines = [
        "| model | input | mapped tensors | float64 class / box max diff | float32 class / box max diff (rel.) "
        "| .h5 / TF2 / TF1+EMA files | anchors v2 / v1 diff | decode diff | detections hard: same rule / shipped "
        "| soft-NMS: same rule / shipped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        f64 = (
            max(x["max_abs_diff"] for x in r["float64"]["class"]),
            max(x["max_abs_diff"] for x in r["float64"]["box"]),
        )
        f32 = [
            max(x["max_abs_diff"] / x["max_abs"] for x in r["float32"][k]) for k in ("class", "box")
        ]
        d, fmt = r["detections"], r["checkpoint_formats"]
        lines.append(
            f"| {r['model']} | {r['image_size'][0]}x{r['image_size'][1]} | {r['mapped_tensors']} | {f64[0]:.1e} / {f64[1]:.1e} "
            f"| {f32[0]:.1e} / {f32[1]:.1e} | {fmt['keras_h5']:.1e} / {fmt['tf2_object_based']:.1e} / {fmt['tf1_name_based_ema']:.1e} "
            f"| {r['anchors']['official_v2_vs_official']:.1e} / "
            f"{r['anchors']['official_v1_vs_official_given_v1_ratios']:.1e} | {r['box_decoding_max_abs_diff']:.1e} "
            f"| {d['hard']['matched_official_rule']}/{d['hard']['official']} / {d['hard']['matched_shipped']}/{d['hard']['official']} "
            f"| {d['gaussian']['matched_official_rule']}/{d['gaussian']['official']} / "
            f"{d['gaussian']['matched_shipped']}/{d['gaussian']['official']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    official_mods = import_official(args.automl)
    from tqdm import tqdm

    results = []
    for spec in tqdm(args.models, desc="models", unit="model"):
        start = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        result = run_model(spec, args, official_mods, rng)
        result["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
        tqdm.write(json.dumps(result))
    print(summary_table(results))
    if args.json:
        common.write_json(
            args.json, {"automl_commit_verified": VERIFIED_COMMIT, "results": results}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
