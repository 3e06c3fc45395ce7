"""``model_fp16.onnx``: float16 weights and compute, float32 input and output (ONNX Runtime's converter)."""

from __future__ import annotations

from cvkeras.export.errors import ConversionError, quiet
from cvkeras.export.onnx.convert import check, compact_names
from cvkeras.serving.errors import first_line


def convert_fp16(proto, artifact: str = "model_fp16.onnx"):
    """float16 weights and compute, float32 input and output (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # the converter edits its argument in place
    try:
        with quiet():
            half = convert_float_to_float16(copy, keep_io_types=True)
    except Exception as exc:  # converter internals
        raise ConversionError(artifact, f"float16 conversion failed ({first_line(exc)}); "
                                        "export without --fp16") from None
    _toposort(half.graph)  # keep_io_types appends its input casts at the end of the node list
    compact_names(half)
    check(half, artifact)
    return half


def _toposort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest for the checker to name
            ordered += pending
            break
        for n in ready:
            available.update(n.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)
