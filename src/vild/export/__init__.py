"""Export: a model folder as a portable graph (`vild export --format onnx`, `export_onnx`)
whose vocabulary stays an input. `vild.inference.onnx.OnnxDetector` runs the result."""
