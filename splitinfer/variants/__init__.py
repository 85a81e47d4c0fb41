"""Model variants (fp32, fp16, bf16, int8), their accuracy and their drift from the reference."""

from splitinfer.variants.accuracy import Accuracy, measure_top1
from splitinfer.variants.drift import Drift, output_drift
from splitinfer.variants.make import VARIANT_KINDS, make_variant, quantize_int8

__all__ = ["VARIANT_KINDS", "Accuracy", "Drift", "make_variant", "measure_top1", "output_drift", "quantize_int8"]
