"""What an int8 ONNX file from ``efficientdet export --format onnx --int8`` computes on an x86 CPU
without VNNI (AVX2 only), emulated on any CPU.

    python benchmarks/onnx_int8_no_vnni.py best_int8.onnx emulated.onnx
    efficientdet val --weights emulated.onnx --data data.yaml --conf 0.001

There, ONNX Runtime's uint8 x int8 kernels (VPMADDUBSW) add the products of two neighbouring
input channels in int16, saturating at -32768..32767, before accumulating in int32. This script
rewrites every group-1 int8 convolution of the QDQ graph as float ops on the exact integer values
that do the same: pair sums (a grouped 1x1 conv, or masked kernels for k x k), Clip to int16,
sum, then ``scale_x * scale_w * (sum - zero_point_x * sum(w)) + bias``. Floats hold these
integers exactly (< 2**24). Files with 7-bit weights (``reduce_range``) cannot saturate and give
the same numbers as the original. Measured on the demo model: BENCHMARKS.md / quantize.py.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx import numpy_helper as nh


def attr(node, key, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)


def emulate(model: onnx.ModelProto) -> int:
    """Rewrite the group-1 int8 convs of ``model`` in place; returns how many."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    inits = {i.name: nh.to_array(i) for i in g.initializer}
    nodes: list = []
    new_inits: list = []
    count = 0

    def const(name, arr):
        new_inits.append(nh.from_array(np.asarray(arr), name))
        return name

    def op(kind, inputs, output, **kw):
        nodes.append(helper.make_node(kind, inputs, [output], **kw))
        return output

    for n in g.node:
        dx = prod.get(n.input[0])
        dw = prod.get(n.input[1]) if len(n.input) > 1 else None
        if not (
            n.op_type == "Conv"
            and attr(n, "group", 1) == 1
            and dx is not None
            and dw is not None
            and dx.op_type == dw.op_type == "DequantizeLinear"
            and inits.get(dw.input[0], np.zeros(0)).dtype == np.int8
        ):
            nodes.append(n)
            continue
        count += 1
        p = f"emu{count}_"
        w = inits[dw.input[0]].astype(np.float32)  # (Co, Ci, kh, kw) integer values
        sw = inits[dw.input[1]].astype(np.float32).reshape(-1)
        sx, zx = float(inits[dx.input[1]]), float(inits[dx.input[2]])
        co, ci, kh, kw = w.shape
        strides, pads = attr(n, "strides", [1, 1]), attr(n, "pads", [0, 0, 0, 0])
        a = op("Cast", [dx.input[0]], p + "a", to=TensorProto.FLOAT)  # uint8 values as float
        if any(pads):  # QLinearConv pads with the zero point
            pad = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
            zero = np.array(zx, np.float32)
            a = op("Pad", [a, const(p + "pads", pad), const(p + "padv", zero)], p + "ap")
        k = kh * kw * ci
        flat = w.transpose(0, 2, 3, 1).reshape(co, k)  # K order (kh, kw, c): NHWC packing
        npair = (k + 1) // 2
        if kh == kw == 1 and ci % 2 == 0:  # group j sees channels 2j, 2j+1; output j * co + o
            wp = flat.reshape(co, npair, 2).transpose(1, 0, 2).reshape(npair * co, 2, 1, 1)
            kernel = dict(group=npair, kernel_shape=[1, 1])
        else:  # one masked k x k kernel per pair
            masks = np.zeros((npair, co, k), np.float32)
            for j in range(npair):
                masks[j, :, 2 * j : 2 * j + 2] = flat[:, 2 * j : 2 * j + 2]
            wp = masks.reshape(npair * co, kh, kw, ci).transpose(0, 3, 1, 2)
            kernel = dict(kernel_shape=[kh, kw])
        wp = np.ascontiguousarray(wp, np.float32)
        pair = op("Conv", [a, const(p + "wp", wp)], p + "pair", strides=strides, **kernel)
        lo, hi = np.array(-32768, np.float32), np.array(32767, np.float32)
        sat = op("Clip", [pair, const(p + "lo", lo), const(p + "hi", hi)], p + "sat")
        shape = np.array([0, npair, co, -1], np.int64)
        r = op("Reshape", [sat, const(p + "shape", shape)], p + "r")  # (N, pairs, Co, H*W)
        axis = np.array([1], np.int64)
        s = op("ReduceSum", [r, const(p + "ax", axis)], p + "s", keepdims=0)  # (N, Co, H*W)
        zsum = (zx * flat.sum(1)).reshape(1, co, 1).astype(np.float32)
        t = op("Sub", [s, const(p + "zsum", zsum)], p + "t")
        scale = (sx * sw).reshape(1, co, 1).astype(np.float32)
        v = op("Mul", [t, const(p + "scale", scale)], p + "u")
        if len(n.input) > 2 and n.input[2]:
            bshape = np.array([1, co, 1], np.int64)
            b = op("Reshape", [n.input[2], const(p + "bshape", bshape)], p + "br")
            v = op("Add", [v, b], p + "v")
        # (N, Co, H*W) -> (N, Co, H, W), H and W from a zero conv of the same geometry
        wz = np.zeros((1, ci, kh, kw), np.float32)
        ref = op(
            "Conv", [a, const(p + "wz", wz)], p + "ref", strides=strides, kernel_shape=[kh, kw]
        )
        shp = op("Shape", [ref], p + "shp")
        two, four = np.array([2], np.int64), np.array([4], np.int64)
        hw = op("Slice", [shp, const(p + "s0", two), const(p + "s1", four)], p + "hw")
        head = np.array([0, co], np.int64)
        out_shape = op("Concat", [const(p + "nc", head), hw], p + "nshape", axis=0)
        op("Reshape", [v, out_shape], n.output[0])
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    return count


def main() -> None:
    src, dst = sys.argv[1:3]
    model = onnx.load(src)
    count = emulate(model)
    onnx.save(model, dst)
    print(f"emulated {count} group-1 int8 convolutions -> {dst}")


if __name__ == "__main__":
    main()
