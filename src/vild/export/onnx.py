"""A model as one ONNX file whose vocabulary stays an input.

    export_model("shapeworld-vild-ensemble", "model.onnx")       # what `vild export` runs
    export_graph(model, "model.onnx", metadata)                  # any ViLDDetector

The graph is `vild.model.graph.DetectionGraph` traced by torch.onnx's TorchScript exporter
(opset 17; torchvision's RoIAlign and NMS export as ONNX operators): inputs image [3, H, W]
with H, W dynamic, text_embeddings [C, D] with C dynamic, base_mask [C], score_threshold [];
outputs as `DetectionGraph.output_names`. The file carries the model folder's config, default
vocabulary, text embeddings and teacher reference as metadata (`vild.inference.onnx_metadata`).
After writing, the export runs the file with onnxruntime on an image size and vocabulary size
the trace never saw and compares it with PyTorch (`check_export`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from vild.errors import VildError, one_line
from vild.inference.onnx_metadata import ExportedModel, encode_metadata

OPSET = 17
#: the export check: boxes (pixels of the resized input) and scores must agree this closely
CHECK_BOX_PX = 0.5
CHECK_SCORE = 1e-3


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise VildError("ONNX export needs the onnx package: pip install 'vild[export]'") from None
    return onnx


def export_graph(graph, path: str | os.PathLike, metadata: dict[str, str], *, opset: int = OPSET) -> Path:
    """Trace `graph` (a `DetectionGraph`) into an ONNX file at `path` (written atomically)
    with `metadata` as its metadata_props."""
    from vild.io import atomic_write_bytes
    from vild.model.graph import INPUT_NAMES

    onnx = _import_onnx()
    path = Path(path)
    dynamic = {"image": {1: "height", 2: "width"}, "text_embeddings": {0: "categories"},
               "base_mask": {0: "categories"}}
    for name in graph.output_names:
        if name != "input_size":
            dynamic[name] = {0: "detections"}
    with tempfile.TemporaryDirectory(prefix=".vild-export-", dir=path.parent) as tmp:
        traced = Path(tmp) / "graph.onnx"
        with warnings.catch_warnings():
            # the tracer warns wherever a Python value becomes a constant (torchvision's pooler
            # scales, empty-input guards); check_export runs other sizes to show none matters
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script, inside torchvision
            torch.onnx.export(graph, graph.example_inputs(), str(traced), dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(graph.output_names),
                              dynamic_axes=dynamic)
        model = onnx.load(str(traced))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, model.SerializeToString())
    return path


def count_unmatched(a: dict, b: dict, *, box_px: float = CHECK_BOX_PX, score: float = CHECK_SCORE) -> int:
    """Detections of `a` (dict of boxes [K, 4], scores [K], labels [K]) without a partner in
    `b` of the same label, box corners within `box_px` and score within `score`, each partner
    used once. Order-free: near ties may swap places."""
    free = torch.ones(len(b["scores"]), dtype=torch.bool)
    missing = 0
    for box, s, label in zip(a["boxes"], a["scores"], a["labels"]):
        ok = (free & (b["labels"] == label) & ((b["boxes"] - box).abs().amax(dim=1) <= box_px)
              & ((b["scores"] - s).abs() <= score))
        hit = torch.where(ok)[0]
        if hit.numel():
            free[hit[0]] = False
        else:
            missing += 1
    return missing


def _clear_of_cutoff(d: dict, limit: int) -> dict:
    """The detections of a full list (`limit` of them) that score clearly above its last one:
    whether a near tie at the cut-off is kept may differ by float rounding."""
    if len(d["scores"]) < limit:
        return d
    keep = d["scores"] > d["scores"].min() + CHECK_SCORE
    return {k: d[k][keep] for k in ("boxes", "scores", "labels")}


def check_export(graph, path: str | os.PathLike) -> int:
    """Run the file with onnxruntime (CPU) and `graph` with PyTorch on an image and a
    vocabulary of sizes the trace did not use; raise `VildError` unless they agree. -> the
    number of detections compared."""
    from vild.inference.onnx import import_onnxruntime

    ort = import_onnxruntime()
    image, text, base, threshold = graph.example_inputs(height=80, width=144, categories=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"image": image, "text_embeddings": text, "base_mask": base, "score_threshold": threshold}
    names = {i.name for i in session.get_inputs()}
    got = session.run(list(graph.output_names), {k: v.numpy() for k, v in feed.items() if k in names})
    got = {k: torch.from_numpy(v) for k, v in zip(graph.output_names, got)}
    want = dict(zip(graph.output_names, graph(image, text, base, threshold)))
    if not torch.equal(got["input_size"], want["input_size"]):
        raise VildError(f"{path}: the exported graph resizes images unlike PyTorch "
                        f"({got['input_size'].tolist()} vs {want['input_size'].tolist()})")
    limit = graph.max_detections
    bad = (count_unmatched(_clear_of_cutoff(want, limit), got)
           + count_unmatched(_clear_of_cutoff(got, limit), want))
    if bad:
        raise VildError(f"{path}: onnxruntime and PyTorch disagree on {bad} of {len(want['scores'])} "
                        "detections of the check image (please report it)")
    return len(want["scores"])


def export_model(name_or_path: str | None, out: str | os.PathLike, *, weights: str | None = None,
                 teacher: str | None = None, method: str | None = None, max_detections: int | None = None,
                 opset: int = OPSET, check: bool = True) -> tuple[Path, ExportedModel, int | None]:
    """A registered model, model folder or hf-hub:ORG/REPO -> an ONNX file at `out`.
    -> (path, what the file carries, detections compared by the check or None)."""
    from vild.inference import registry
    from vild.model.graph import DetectionGraph
    from vild.training.checkpoint import load_model, load_vocabulary

    if opset < 17:
        raise VildError(f"--opset {opset}: the graph needs opset 17 or later")
    out = Path(out)
    if out.is_dir():
        raise VildError(f"--out {out} is a folder: give a file name such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise VildError(f"--out {out}: folder {out.parent} does not exist")
    resolved = registry.resolve(name_or_path, weights=weights, teacher=teacher)
    model = load_model(resolved.folder, expected=resolved.expected)
    vocab, embeddings = load_vocabulary(resolved.folder, model.config.embed_dim, required=False)
    try:
        graph = DetectionGraph(model, method=method, max_detections=max_detections)
    except ValueError as e:
        raise VildError(str(e)) from None
    meta = registry.read_detector_json(resolved.folder)
    exported = ExportedModel(
        name=resolved.name, config=model.config, method=graph.method, max_detections=graph.max_detections,
        teacher=resolved.teacher, teacher_identity=resolved.teacher_identity, templates=resolved.templates,
        default_vocabulary=resolved.default_vocabulary, vocabulary=vocab, text_embeddings=embeddings,
        bundled=resolved.bundled, description=str(meta.get("description") or ""))
    try:
        export_graph(graph, out, encode_metadata(exported), opset=opset)
    except VildError:
        raise
    except Exception as e:  # noqa: BLE001 - an exporter failure is a bug to report, in one line
        raise VildError(f"ONNX export of {resolved.name} failed ({type(e).__name__}: {one_line(e)})") from None
    compared = check_export(graph, out) if check else None
    return out, exported, compared
