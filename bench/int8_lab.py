"""Scratch lab for issue #9: full-int8 fidelity of small MobileNets, method by method.

    python bench/int8_lab.py prep RUN          # decode the export's images, Keras probs, float ONNX (cached)
    python bench/int8_lab.py VARIANT RUN [N]   # quantize, report top-1 agreement vs Keras

VARIANT: base, weights-only, acts-only, float-logits, mse-ranges, bc-oneshot (3 rounds), bc N / gptq N /
gptq-bc N (export/onnx/bias_correction.py / weight_rounding.py on N; ``bc`` is the layer-by-layer correction
the README's "bc-seq" rows measured on N random calibration images, now the export's own code).

Agreement is over the export's fidelity images (validation + held-back training), the same split, seed
and calibration sample as ``cvkeras export --int8``; int8 models run with exact kernels
(``session.x64quantprecision=1``), as ``serving.Predictor`` runs them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lab_dir(run: Path) -> Path:
    d = run / "lab"
    d.mkdir(exist_ok=True)
    return d


def prep(run: Path) -> None:
    from cvkeras.export import fidelity
    from cvkeras.export.exporter import load_float32_model
    from cvkeras.export.onnx import convert as to_onnx
    from cvkeras.export.onnx import quantize
    from cvkeras.export.unknown import keras_outputs
    from cvkeras.run import rundir

    rd = rundir.RunDir(run)
    labels = rd.labels()
    model = load_float32_model(run, len(labels))
    size = tuple(int(d) for d in model.input_shape[1:3])
    seed = rd.seed()
    data = fidelity.fidelity_set(run, size, 300, seed)
    probs = keras_outputs(model, data.images, False)[0]
    lab = lab_dir(run)
    np.savez(lab / "data.npz", images=data.images, labels=data.labels, splits=data.splits,
             calibration=data.calibration, keras=probs)
    proto = to_onnx.keras_to_onnx(model)
    to_onnx.save(proto, lab / "float.onnx")
    quantize.preprocess(lab / "float.onnx", lab / "pre.onnx")
    print("fidelity", len(data.images), "calibration", len(data.calibration))


def load(run: Path):
    d = np.load(lab_dir(run) / "data.npz")
    return {k: d[k] for k in d.files}


def session(path_or_proto, optimize: bool = True, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.x64quantprecision", "1")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = path_or_proto if isinstance(path_or_proto, (str, Path)) else path_or_proto.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, opts,
                                providers=["CPUExecutionProvider"])


def predict(sess, images: np.ndarray, batch: int = 64) -> np.ndarray:
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: images[i : i + batch].astype(np.float32)})[0]
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def agreement(model, d, tag: str) -> float:
    t = time.perf_counter()
    p = predict(session(model), d["images"])
    k = d["keras"].argmax(1)
    agree = p.argmax(1) == k
    val = d["splits"] == "val"
    drop = (k[val] == d["labels"][val]).mean() - (p[val].argmax(1) == d["labels"][val]).mean()
    print(f"{tag:40s} agreement {agree.mean() * 100:6.2f} % ({(~agree).sum()} flips / {len(agree)})  "
          f"val {agree[val].mean() * 100:6.2f} %  drop {drop * 100:+.2f} pt  "
          f"[{time.perf_counter() - t:.0f}s]", flush=True)
    return float(agree.mean())




# ---------------------------------------------------------------- quantization variants

def qdq(run: Path, calib: np.ndarray, extra: dict | None = None, method: str = "minmax", exclude=()):
    """cvkeras.export.onnx.quantize's static QDQ int8 (same settings), quantizer's names kept; ``extra`` merged in."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from cvkeras.export.calibration import ort_data_reader

    pre = lab_dir(run) / "pre.onnx"
    out = lab_dir(run) / "tmp_int8.onnx"
    graph = onnx.load(str(pre)).graph
    keep = [n.name for n in graph.node if n.op_type == "Softmax"] + list(exclude)
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(str(pre), str(out), ort_data_reader(calib, graph.input[0].name),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm,
                    nodes_to_exclude=keep,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, **(extra or {})})
    return onnx.load(str(out))


def weight_only(run: Path):
    """The float model with every Conv/Gemm weight rounded to per-channel symmetric int8 (axis 0)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(lab_dir(run) / "pre.onnx"))
    init = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[1] in init:
            t = init[n.input[1]]
            w = numpy_helper.to_array(t)
            axes = tuple(range(1, w.ndim))
            if n.op_type == "Gemm":  # weight [in, out] (transB=0): channel axis 1
                trans = any(a.name == "transB" and a.i for a in n.attribute)
                axes = (1,) if trans else (0,)
            s = np.abs(w).max(axis=axes, keepdims=True) / 127.0
            s[s == 0] = 1
            t.CopyFrom(numpy_helper.from_array((np.round(w / s) * s).astype(np.float32), t.name))
    return proto


def bias_correct(run: Path, q, images: np.ndarray, passes: int = 3, damping: float = 1.0, ops=("Conv", "Gemm")):
    """Empirical bias correction of QDQ model ``q`` in place: int32 biases absorb per-channel mean error."""
    import onnx
    from onnx import numpy_helper

    from cvkeras.export.onnx.bias_correction import channel_means

    f = onnx.load(str(lab_dir(run) / "pre.onnx"))
    fout = {n.name: n.output[0] for n in f.graph.node if n.op_type in ops}
    init = {t.name: t for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    targets = []
    for n in q.graph.node:
        if n.op_type in ops and n.name in fout and len(n.input) > 2:
            dq = producer.get(n.input[2])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in init:
                print("skip", n.name, "bias not a DQ of an initializer")
                continue
            targets.append((n.name, fout[n.name], n.output[0], dq.input[0],
                            numpy_helper.to_array(init[dq.input[1]]).astype(np.float64)))
    fm = channel_means(f, [t[1] for t in targets], images, True)
    for p in range(passes):
        qm = channel_means(q, [t[2] for t in targets], images, False)
        res = []
        for (_name, _, _, b_name, scale), a, b in zip(targets, fm, qm, strict=True):
            delta = (b - a) * damping
            bias = numpy_helper.to_array(init[b_name]).astype(np.int64)
            bias = bias - np.round(delta / scale).astype(np.int64)
            init[b_name].CopyFrom(numpy_helper.from_array(bias.astype(np.int32), b_name))
            res.append(float(np.abs(b - a).mean() / (np.abs(a).mean() + 1e-9)))
        print(f"pass {p}: mean |dmean|/|mean| first 6 {np.round(res[:6], 4)} max {max(res):.4f} "
              f"avg {np.mean(res):.4f}", flush=True)
    return q


def act_only(run: Path, q):
    """QDQ model ``q`` with every Conv/Gemm weight and bias back in float32 (run it unoptimized)."""
    import onnx

    f = onnx.load(str(lab_dir(run) / "pre.onnx"))
    fin = {n.name: list(n.input) for n in f.graph.node}
    finit = {t.name: t for t in f.graph.initializer}
    m = onnx.ModelProto()
    m.CopyFrom(q)
    have = {t.name for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.name in fin:
            for k in (1, 2):
                if k < len(n.input) and k < len(fin[n.name]):
                    src = fin[n.name][k]
                    if "f_" + src not in have:
                        t = onnx.TensorProto()
                        t.CopyFrom(finit[src])
                        t.name = "f_" + src
                        m.graph.initializer.append(t)
                        have.add(t.name)
                    n.input[k] = "f_" + src
    return m


def flips_by_margin(probs: np.ndarray, d) -> None:
    k = d["keras"]
    top2 = np.sort(k, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flip = probs.argmax(1) != k.argmax(1)
    for lo, hi in ((0, .02), (.02, .05), (.05, .1), (.1, .2), (.2, 1)):
        sel = (margin >= lo) & (margin < hi)
        print(f"  keras prob margin {lo:.2f}-{hi:.2f}: {sel.sum():5d} images, {flip[sel].sum():4d} flips")


def float_logits(q):
    """Drop the QuantizeLinear/DequantizeLinear pair on the outputs of Gemm nodes (float logits)."""
    producer = {o: n for n in q.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop = []
    for n in q.graph.node:
        if n.op_type != "Gemm":
            continue
        for ql in consumers.get(n.output[0], []):
            if ql.op_type != "QuantizeLinear":
                continue
            for dq in consumers.get(ql.output[0], []):
                for c in consumers.get(dq.output[0], []):
                    c.input[:] = [n.output[0] if x == dq.output[0] else x for x in c.input]
                drop.append(dq)
            drop.append(ql)
    for n in drop:
        q.graph.node.remove(n)
    del producer
    return q


def mse_ranges(run: Path, q, images: np.ndarray, per_tensor: int = 200000, seed: int = 0,
               fractions=(1.0, 0.97, 0.94, 0.9, 0.86, 0.82, 0.78, 0.74, 0.7, 0.65, 0.6)) -> dict:
    """TensorQuantOverrides: per activation tensor of ``q``, the clip max (of the float model's values on
    ``images``) whose uint8 fake quantization has the smallest MSE."""
    import onnx

    from cvkeras.export.onnx.bias_correction import with_outputs

    f = onnx.load(str(lab_dir(run) / "pre.onnx"))
    fnames = {o for n in f.graph.node for o in n.output}
    names = sorted({n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"} & fnames)
    sess = session(with_outputs(f, names))
    inp = sess.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    keep = {t: [] for t in names}
    lo = {t: np.inf for t in names}
    hi = {t: -np.inf for t in names}
    for i in range(0, len(images), 32):
        outs = sess.run(names, {inp: images[i : i + 32].astype(np.float32)})
        for t, o in zip(names, outs, strict=True):
            o = o.ravel()
            lo[t] = min(lo[t], float(o.min()))
            hi[t] = max(hi[t], float(o.max()))
            k = max(1, per_tensor * 32 // len(images))
            keep[t].append(rng.choice(o, min(k, o.size), replace=False))
    overrides = {}
    for t in names:
        x = np.concatenate(keep[t]).astype(np.float64)
        a, b = min(lo[t], 0.0), max(hi[t], 0.0)
        best = None
        for fr in fractions:
            bb = b * fr
            aa = a * fr
            s = (bb - aa) / 255 if bb > aa else 1.0
            zp = np.round(-aa / s)
            xq = (np.clip(np.round(x / s) + zp, 0, 255) - zp) * s
            e = ((xq - x) ** 2).mean()
            if best is None or e < best[0]:
                best = (e, aa, bb, fr)
        overrides[t] = [{"rmin": np.float32(best[1]), "rmax": np.float32(best[2])}]
        if best[3] < 1.0:
            print(f"  {t}: range [{a:.3f}, {b:.3f}] -> x{best[3]}")
    return overrides


def main(argv: list[str]) -> None:
    from cvkeras.export.fidelity import with_flips
    from cvkeras.export.onnx.bias_correction import correct_biases
    from cvkeras.export.onnx.weight_rounding import round_weights

    cmd, run = argv[0], Path(argv[1])
    n = int(argv[2]) if len(argv) > 2 else 128
    if cmd == "prep":
        prep(run)
        return
    d = load(run)
    cal = with_flips(d["calibration"])
    pre = lab_dir(run) / "pre.onnx"
    q = qdq(run, cal, {"TensorQuantOverrides": mse_ranges(run, qdq(run, cal), cal)} if cmd == "mse-ranges" else None)
    if cmd == "weights-only":
        agreement(weight_only(run), d, cmd)
        return
    if cmd == "acts-only":
        p = predict(session(act_only(run, q), optimize=False), d["images"])
        a = p.argmax(1) == d["keras"].argmax(1)
        print(f"{cmd}: {a.mean() * 100:.2f} % ({(~a).sum()} flips / {len(a)})")
        return
    if cmd == "float-logits":
        q = float_logits(q)
    elif cmd == "bc-oneshot":
        q = bias_correct(run, q, cal, passes=3)
    if cmd in ("gptq", "gptq-bc"):
        print(round_weights(pre, q, cal, n))
    if cmd in ("bc", "gptq-bc"):
        print(correct_biases(pre, q, cal, n).summary())
    agreement(q, d, f"{cmd} {n}")
    flips_by_margin(predict(session(q), d["images"]), d)


if __name__ == "__main__":
    main(sys.argv[1:])
