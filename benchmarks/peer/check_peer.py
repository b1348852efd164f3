"""Check that the peer `effdet` in benchmarks/peer/.venv reproduces our reference fixtures.

Run with the PEER venv (it imports effdet, not our package):

    benchmarks/peer/.venv/bin/python benchmarks/peer/check_peer.py [fixture.pt ...]

For each fixture in tests/fixtures (see tests/fixtures/README.md) it builds
`effdet.create_model(<effdet_model_name>, image_size=<fixture size>, num_classes=90)`,
loads the float16 state dict cast to float32 (strict), runs the fixture input in eval mode
and compares: anchors (exact), raw head outputs class_out/box_out (1e-4 absolute, or, where
that is exceeded, no farther than the fixture itself is from the same network run in
float64: see README.md), DetBenchPredict detections (same classes, scores within 1e-4,
boxes within 5e-5 * image size px, up to ties in score order), AnchorLabeler targets
(classes exact, box targets within 1e-6) and DetectionLoss values (1e-4 relative).

Prints one line per check and, last, a JSON summary line; exits 1 if anything fails.
"""

import argparse
import copy
import json
import os
import sys
import time

import effdet
import torch
from effdet import create_model
from effdet.anchors import AnchorLabeler, Anchors
from effdet.bench import DetBenchPredict
from effdet.loss import DetectionLoss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = [
    os.path.join(ROOT, "tests", "fixtures", "effdet_d0_256.pt"),
    os.path.join(ROOT, "tests", "fixtures", "effdet_lite0_192x320.pt"),
]
HEAD_ATOL = 1e-4  # tests/fixtures/README.md's tolerance for raw head outputs
LOSS_RTOL = 1e-4
DET_SCORE_ATOL = 1e-4
DET_BOX_RTOL = 5e-5  # box corners: this times max(H, W) pixels (0.013 px at 256)
LABEL_BOX_ATOL = 1e-6  # labeler box targets: float32 rounding only


def _maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def compare_detections(got, ref, box_atol, score_atol=DET_SCORE_ATOL):
    """Same detections per image, up to the order of equal scores.

    Both sides are sorted by (score desc, class, x1, y1) so ties in score order do not
    matter; classes must be equal, scores within score_atol, boxes within box_atol pixels.
    If the sorted rows disagree (near-ties can swap), falls back to greedy row matching.
    Returns (ok, max score diff, max box diff)."""
    if got.shape != ref.shape:
        return False, float("inf"), float("inf")

    def order(t):
        idx = torch.arange(t.shape[0])
        for k in (t[:, 1], t[:, 0], t[:, 5], -t[:, 4]):  # last key is the primary one
            idx = idx[torch.sort(k[idx], stable=True)[1]]
        return t[idx]

    def row_ok(g, r):
        return (
            (g[..., 5] == r[..., 5])
            & ((g[..., 4] - r[..., 4]).abs() <= score_atol)
            & ((g[..., :4] - r[..., :4]).abs().amax(-1) <= box_atol)
        )

    ok, s_worst, b_worst = True, 0.0, 0.0
    for g, r in zip(got, ref, strict=True):
        g, r = order(g), order(r)
        if not bool(row_ok(g, r).all()):
            used = torch.zeros(g.shape[0], dtype=torch.bool)
            perm = []
            for row in r:
                cand = row_ok(g, row) & ~used
                if not bool(cand.any()):
                    return False, _maxdiff(g[:, 4], r[:, 4]), _maxdiff(g[:, :4], r[:, :4])
                j = int(torch.nonzero(cand)[0])
                used[j] = True
                perm.append(j)
            g = g[perm]
        s_worst = max(s_worst, _maxdiff(g[:, 4], r[:, 4]))
        b_worst = max(b_worst, _maxdiff(g[:, :4], r[:, :4]))
    return ok, s_worst, b_worst


def check_fixture(path):
    fx = torch.load(path, weights_only=True)
    name = fx["effdet_model_name"]
    hw = tuple(int(v) for v in fx["image_size_hw"])
    results = {}

    def record(key, ok, detail):
        results[key] = {"ok": bool(ok), "detail": detail}
        print(f"  {'PASS' if ok else 'FAIL'}  {key}: {detail}")

    print(
        f"{os.path.basename(path)}: effdet.create_model('{name}', image_size={hw}, "
        f"num_classes={fx['num_classes']})"
    )
    model = create_model(
        name,
        bench_task="",
        num_classes=fx["num_classes"],
        image_size=hw,
        pretrained=False,
        pretrained_backbone=False,
    )
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in fx["state_dict_fp16"].items()}
    missing, unexpected = model.load_state_dict(sd, strict=True)
    record(
        "state_dict",
        not missing and not unexpected,
        f"{len(sd)} tensors loaded strict (fp16 -> fp32)",
    )
    model.eval()

    anchors = Anchors.from_config(model.config)
    ok = anchors.boxes.shape == fx["anchors_yxyx"].shape and torch.equal(
        anchors.boxes.float(), fx["anchors_yxyx"].float()
    )
    record(
        "anchors",
        ok,
        f"shape {tuple(anchors.boxes.shape)}, exact="
        f"{ok} (max diff {_maxdiff(anchors.boxes, fx['anchors_yxyx']):.3g})",
    )

    x = fx["input"]
    with torch.no_grad():
        class_out, box_out = model(x)
        # The same network in float64: tells how far the float32 fixture itself is from
        # exact arithmetic, i.e. the float32 accumulation-order noise of this model.
        model64 = copy.deepcopy(model).double()
        class64, box64 = model64(x.double())
    for key, got, ref, exact in (
        ("class_out", class_out, fx["class_out"], class64),
        ("box_out", box_out, fx["box_out"], box64),
    ):
        diffs = [_maxdiff(g, r) for g, r in zip(got, ref, strict=True)]
        noise = max(_maxdiff(r, e) for r, e in zip(ref, exact, strict=True))
        shapes_ok = [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref]
        ok = shapes_ok and len(got) == len(ref)
        if ok and max(diffs) <= HEAD_ATOL:
            verdict = f"within {HEAD_ATOL} abs"
        elif ok and max(diffs) <= noise:
            verdict = (
                f"above {HEAD_ATOL} abs, but the fixture itself is {noise:.2e} from the "
                f"float64 result: float32 rounding noise, not a model difference"
            )
        else:
            ok = False
            verdict = f"exceeds {HEAD_ATOL} abs and the fixture's own float32 noise {noise:.2e}"
        record(key, ok, f"max abs diff per level {[f'{d:.2e}' for d in diffs]}: {verdict}")
        results[key]["max_abs_diff"] = max(diffs)
        results[key]["fixture_vs_float64"] = noise

    bench = DetBenchPredict(model).eval()
    with torch.no_grad():
        det = bench(x)
    box_atol = DET_BOX_RTOL * max(hw)
    ok, s_d, b_d = compare_detections(det, fx["detections_xyxy_score_cls1"], box_atol)
    n_real = int((fx["detections_xyxy_score_cls1"][..., 4] > 0).sum())
    record(
        "detections",
        ok,
        f"shape {tuple(det.shape)}, {n_real} non-padding rows in reference; "
        f"classes equal, max score diff {s_d:.1e} (tol {DET_SCORE_ATOL}), max box diff "
        f"{b_d:.1e} px (tol {box_atol:.3g} px)",
    )

    # Labeler and loss (DetBenchTrain's pieces): boxes go in as yxyx, classes 1-based.
    labeler = AnchorLabeler(anchors, fx["num_classes"], match_threshold=0.5)
    gt_boxes = [b[:, [1, 0, 3, 2]].float() for b in fx["gt_boxes_xyxy"]]
    gt_cls = [(c + 1).float() for c in fx["gt_labels0"]]
    cls_t, box_t, npos = labeler.batch_label_anchors(gt_boxes, gt_cls)
    ok_c = all(
        torch.equal(a.long(), b.long()) for a, b in zip(cls_t, fx["cls_targets"], strict=True)
    )
    box_d = max(_maxdiff(a, b) for a, b in zip(box_t, fx["box_targets"], strict=True))
    ok_b = box_d <= LABEL_BOX_ATOL
    ok_n = torch.equal(npos.float(), fx["num_positives"].float())
    record(
        "labeler",
        ok_c and ok_b and ok_n,
        f"cls exact={ok_c}, box max diff {box_d:.2e} (tol {LABEL_BOX_ATOL}), num_positives {npos.tolist()} "
        f"(ref {fx['num_positives'].tolist()})",
    )

    loss_fn = DetectionLoss(model.config)
    loss, closs, bloss = loss_fn(
        fx["class_out"], fx["box_out"], fx["cls_targets"], fx["box_targets"], fx["num_positives"]
    )
    rel = [
        abs(a.item() - b.item()) / max(abs(b.item()), 1e-12)
        for a, b in ((loss, fx["loss"]), (closs, fx["class_loss"]), (bloss, fx["box_loss"]))
    ]
    record(
        "loss",
        max(rel) <= LOSS_RTOL,
        f"loss {loss.item():.6f} (ref {fx['loss'].item():.6f}), rel diffs "
        f"{[f'{r:.1e}' for r in rel]} (tol {LOSS_RTOL})",
    )
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fixtures", nargs="*", default=FIXTURES)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import timm
    import torchvision

    print(
        f"peer: effdet {getattr(effdet, '__version__', None) or _dist_version('effdet')}, "
        f"timm {timm.__version__}, torchvision {torchvision.__version__}, torch {torch.__version__}"
    )
    t0 = time.time()
    summary = {}
    for path in args.fixtures:
        summary[os.path.basename(path)] = check_fixture(path)
    all_ok = all(r["ok"] for res in summary.values() for r in res.values())
    print(f"{'ALL PASS' if all_ok else 'SOME CHECKS FAILED'} ({time.time() - t0:.1f} s)")
    print(json.dumps({"ok": all_ok, "results": summary}))
    return 0 if all_ok else 1


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
