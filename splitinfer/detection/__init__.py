"""Object detection end to end: a synthetic detection set, anchors, the detector's post-processing stage
(box decoding and non-maximum suppression) and COCO-style mAP.

The detector network itself lives in the zoo (:mod:`splitinfer.zoo.detector`) and divides like any model;
its data-dependent end is the registered post-processing stage ``detection.decode_nms``.

Public surface: :func:`synthetic_detection_set`, :class:`DetectionSet`, :data:`CLASSES`, :func:`anchors`,
:func:`decode_nms`, :func:`detections_of`, :class:`Box`, :func:`mean_average_precision`,
:func:`train_detector`.
"""

from splitinfer.detection.anchors import AnchorLevel, anchors, encode_boxes
from splitinfer.detection.dataset import CLASSES, DetectionSet, synthetic_detection_set
from splitinfer.detection.evaluate import MeanAP, mean_average_precision
from splitinfer.detection.postprocess import STAGE, Box, decode_nms, detections_of, nms
from splitinfer.detection.train import train_detector

__all__ = [
    "CLASSES",
    "STAGE",
    "AnchorLevel",
    "Box",
    "DetectionSet",
    "MeanAP",
    "anchors",
    "decode_nms",
    "detections_of",
    "encode_boxes",
    "mean_average_precision",
    "nms",
    "synthetic_detection_set",
    "train_detector",
]
