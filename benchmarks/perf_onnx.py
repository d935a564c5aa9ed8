"""onnxruntime (CPU) against PyTorch (CPU), one image at a time, through vild's two runners.

    python benchmarks/perf_onnx.py --threads 1 --repeats 3       # both models
    python benchmarks/perf_onnx.py --quick                       # plumbing: bundled model, 1 repeat

Models: the bundled shapeworld-vild-ensemble at its native 128 px on its example image, with
its 24-name default vocabulary; and the `lvis-r50` preset (R50-FPN, mode vild, random init:
speed does not depend on the values; 1,000 proposals, masks) at 1024 px on a structured test
image (`perf_inference.test_images`) with 1,203 random unit text embeddings. Score threshold
0 and 100 detections (`Detector.detect`'s default; 100 masks of 1024 x 1024 stay within its
mask memory bound), so the mask head always runs on 100 boxes.
Per model, the median of --repeats runs after one warm-up, per stage:
- graph: what the ONNX file computes (`vild.model.graph.DetectionGraph`: network, scoring,
  class-aware NMS, mask head), eager PyTorch vs `InferenceSession.run`;
- finish: `finish_detections` (box scaling, mask pasting: the same code) on each one's outputs;
- end_to_end: `vild.model.predict.predict` (the `Detector`'s path, its CPU post-processing
  branch) vs `OnnxDetector.detect_tensors` (pad + run + finish).
Plus onnxruntime's profiler on one run: kernel time by operator type (the profiler adds
overhead; read it as shares, not latency). Writes benchmarks/results/perf_onnx_cpu.json
(or --out), with the command, threads and load averages: the numbers are only as quiet as
the machine was.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_inference as perf  # noqa: E402  (puts src/ on the path too)

from vild.export.onnx import export_graph, export_model  # noqa: E402
from vild.inference.inputs import Vocabulary  # noqa: E402
from vild.inference.onnx import OnnxDetector  # noqa: E402
from vild.inference.onnx_metadata import ExportedModel, encode_metadata  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.model.graph import DetectionGraph  # noqa: E402
from vild.model.postprocess import finish_detections  # noqa: E402
from vild.model.predict import pad_thin_image, predict  # noqa: E402


def bundled(folder: Path, threads: int):
    """(PyTorch model, OnnxDetector, image, vocabulary) of the bundled model."""
    from vild.data.images import load_image
    from vild.inference import Detector
    from vild.inference.registry import example_images

    path, _, _ = export_model(None, folder / "bundled.onnx", check=False)
    det = Detector.from_pretrained()
    vocab = det.encode_vocabulary(None)
    return det.model, OnnxDetector.load(path, device="cpu", threads=threads), load_image(example_images()[0]), vocab


def lvis_r50(folder: Path, threads: int, size: int, categories: int):
    """(random lvis-r50 model, OnnxDetector, test image, random vocabulary): exported with
    metadata but no vocabulary or teacher (the embeddings are given as a `Vocabulary`)."""
    model = perf.vild_detector(size, torch.device("cpu"))
    graph = DetectionGraph(model, max_detections=100)
    meta = ExportedModel(name="lvis-r50-random", config=model.config, method=graph.method,
                         max_detections=graph.max_detections, teacher=None, teacher_identity=None)
    path = export_graph(graph, folder / "lvis-r50.onnx", encode_metadata(meta))
    g = torch.Generator().manual_seed(categories)
    text = torch.nn.functional.normalize(torch.randn(categories, model.config.embed_dim, generator=g), dim=-1)
    vocab = Vocabulary(tuple(f"c{i}" for i in range(categories)), text, torch.zeros(categories, dtype=torch.bool))
    return model, OnnxDetector.load(path, device="cpu", threads=threads), perf.test_images(size, 1)[0], vocab


def onnx_profile(path: str, feed: dict, threads: int) -> dict:
    """Kernel seconds by operator type in one profiled onnxruntime run (top 8 + other)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e6
    top = dict(by_op.most_common(8))
    top["other"] = sum(by_op.values()) - sum(top.values())
    return top


def measure(name: str, model, onnx_det: OnnxDetector, image: torch.Tensor, vocab: Vocabulary, repeats: int,
            threads: int) -> dict:
    cfg, limit = model.config, onnx_det.exported.max_detections
    graph = DetectionGraph(model, max_detections=limit)
    padded, size = pad_thin_image(image, cfg)
    inputs = (padded, vocab.embeddings, vocab.base, torch.tensor(0.0))
    session = onnx_det.session
    takes = {i.name for i in session.get_inputs()}  # base_mask only where the method uses it
    feed = {k: v.numpy() for k, v in zip(("image", "text_embeddings", "base_mask", "score_threshold"), inputs)
            if k in takes}
    names = list(graph.output_names)

    def finish(out):
        return lambda: finish_detections(
            out["boxes"], out["scores"], out["labels"], out.get("masks"), out["embeddings"],
            out.get("image_embeddings"), input_size=tuple(int(s) for s in out["input_size"]),
            padded_size=tuple(padded.shape[-2:]), image_size=size)

    with torch.inference_mode():
        eager = dict(zip(names, graph(*inputs)))
    ort_out = {k: torch.from_numpy(v) for k, v in zip(names, session.run(names, feed))}
    stages = {
        "graph": {"pytorch": perf.time_call(lambda: graph(*inputs), torch.device("cpu"), repeats),
                  "onnxruntime": perf.time_call(lambda: session.run(names, feed), torch.device("cpu"), repeats)},
        "finish": {"pytorch": perf.time_call(finish(eager), torch.device("cpu"), repeats),
                   "onnxruntime": perf.time_call(finish(ort_out), torch.device("cpu"), repeats)},
        "end_to_end": {
            "pytorch": perf.time_call(lambda: predict(model, [image], vocab.embeddings, base_mask=vocab.base,
                                                      threshold=0.0, max_detections=limit,
                                                      max_mask_bytes=onnx_det.max_mask_bytes),
                                      torch.device("cpu"), repeats),
            "onnxruntime": perf.time_call(lambda: onnx_det.detect_tensors([image], vocab, threshold=0.0,
                                                                          max_detections=limit),
                                          torch.device("cpu"), repeats)},
    }
    for s in stages.values():
        s["ratio_onnxruntime_over_pytorch"] = s["onnxruntime"] / s["pytorch"]
    row = {"model": name, "image_px": list(size), "input_px": [int(s) for s in ort_out["input_size"]],
           "categories": len(vocab), "detections": int(len(ort_out["scores"])), "max_detections": limit,
           "median_s": stages, "onnxruntime_profile_s_by_op": onnx_profile(onnx_det.source, feed, threads),
           "loadavg_1min": round(os.getloadavg()[0], 2)}
    perf.log(f"{name}: " + "  ".join(f"{k} torch {v['pytorch']:.3f} s / ort {v['onnxruntime']:.3f} s"
                                     for k, v in stages.items()))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per stage after one warm-up (default 3)")
    p.add_argument("--quick", action="store_true", help="plumbing: the bundled model only, 1 repeat")
    p.add_argument("--size", type=int, default=1024, help="R50 image side in px (default 1024)")
    p.add_argument("--categories", type=int, default=1203, help="R50 vocabulary size (default 1203)")
    p.add_argument("--out", help="result json (default benchmarks/results/perf_onnx_cpu.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    import onnxruntime

    result = {
        "benchmark": "perf_onnx", "quick": args.quick,
        "command": "python benchmarks/perf_onnx.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"type": "cpu", "name": perf.device_name(torch.device("cpu")), "cpu_count": os.cpu_count(),
                   "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                   "torch_threads": torch.get_num_threads(), "onnxruntime_intra_op_threads": args.threads,
                   "provider": "CPUExecutionProvider", "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"repeats": repeats, "warm_up": 1, "batch": 1, "score_threshold": 0.0, "precision": "fp32",
                     "statistic": "median"},
        "gpu": "not measured",
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["rows"].append(measure("shapeworld-vild-ensemble (bundled, native 128 px)",
                                      *bundled(folder, args.threads), repeats, args.threads))
        if not args.quick:
            perf.log(f"exporting lvis-r50 at {args.size} px")
            result["rows"].append(measure(f"lvis-r50 preset, random init, {args.size} px",
                                          *lvis_r50(folder, args.threads, args.size, args.categories),
                                          repeats, args.threads))
    result["device"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out) if args.out else perf.ROOT / "benchmarks" / "results" / (
        f"perf_onnx_cpu{'_quick' if args.quick else ''}.json")
    save_json(out, result)
    perf.log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
