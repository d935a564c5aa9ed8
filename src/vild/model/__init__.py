"""The ViLD detector: tensors in, typed `DetectorOutput` out."""

from vild.model.config import ViLDConfig
from vild.model.detector import ViLDDetector, build_detector
from vild.model.outputs import DetectorOutput, Detections

__all__ = ["Detections", "DetectorOutput", "ViLDConfig", "ViLDDetector", "build_detector"]
