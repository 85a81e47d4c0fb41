"""Model variants (fp32, fp16, bf16, int8) and their accuracy."""

from splitinfer.variants.accuracy import Accuracy, measure_top1
from splitinfer.variants.make import VARIANT_KINDS, make_variant, quantize_int8

__all__ = ["VARIANT_KINDS", "Accuracy", "make_variant", "measure_top1", "quantize_int8"]
