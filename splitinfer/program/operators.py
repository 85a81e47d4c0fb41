"""The operators a program may use: a vetted allow-list of ATen overloads, and the program's record of them.

``torch.ops.aten`` holds well over two thousand operators, some of which read files (``aten.from_file``),
touch global state or take data-dependent shortcuts. A program is data that arrives from a pool, so only the
overloads that ``torch.export`` produces for the model families splitinfer supports resolve; everything else
is refused when the program loads, naming the operator. The list grows deliberately: each family below is
exported in ``tests/unit/test_operators.py``, which fails when an entry is no longer produced by any of them
(so nothing stays on the list without a model that needs it) and when a family needs an operator the list
lacks.

A program records the torch version it was written with and the allow-list version (``OPERATOR_SET``);
loading refuses a program written with another torch minor release (ATen schemas change between them) or
with an operator set this build does not know.
"""

from __future__ import annotations

import torch

from splitinfer.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "ALLOWED_OPERATORS",
    "OPERATOR_SET",
    "check_compatible",
    "check_operator",
    "torch_release",
]

#: Version of the allow-list below; bump when an entry is removed or changes meaning.
OPERATOR_SET = "splitinfer.aten/1"
_KNOWN_SETS = frozenset({OPERATOR_SET})

_FAMILIES: dict[str, tuple[str, ...]] = {
    # CNNs: chains, residual and inception blocks, ResNet-18/50 shapes, the detector's backbone and FPN.
    "cnn": (
        "aten.conv2d.default",
        "aten.batch_norm.default",
        "aten.relu.default",
        "aten.max_pool2d.default",
        "aten.adaptive_avg_pool2d.default",
        "aten.avg_pool2d.default",  # fixed-window average pooling (Inception-, VGG-style heads)
        "aten.flatten.using_ints",
        "aten.cat.default",
        "aten.mean.dim",
        "aten.upsample_nearest2d.vec",
    ),
    # Elementwise arithmetic and comparisons every family uses.
    "elementwise": (
        "aten.add.Tensor",
        "aten.add_.Tensor",
        "aten.sub.Tensor",
        "aten.mul.Tensor",
        "aten.div.Tensor",
        "aten.neg.default",
        "aten.abs.default",
        "aten.pow.Tensor_Scalar",
        "aten.rsqrt.default",
        "aten.log.default",
        "aten.tanh.default",
        "aten.gelu.default",
        "aten.clamp.Tensor",
        "aten.min.other",
        "aten.eq.Tensor",
        "aten.ne.Scalar",
        "aten.ge.Scalar",
        "aten.gt.Scalar",
        "aten.lt.Scalar",
        "aten.le.Tensor",
        "aten.__and__.Tensor",
        "aten.isinf.default",
        "aten.any.default",
        "aten.where.self",
        "aten.where.Scalar",
        "aten.where.ScalarOther",
        "aten.cumsum.default",
        "aten.diff.default",
    ),
    # Shapes, views, copies and constants.
    "shape": (
        "getitem",
        "aten.reshape.default",
        "aten.view.default",
        "aten.permute.default",
        "aten.transpose.int",
        "aten.unsqueeze.default",
        "aten.squeeze.dim",
        "aten.unflatten.int",
        "aten.expand.default",
        "aten.select.int",
        "aten.slice.Tensor",
        "aten.split.Tensor",
        "aten.index.Tensor",
        "aten.gather.default",
        "aten.contiguous.default",
        "aten.alias.default",
        "aten.clone.default",  # export's copy of an output that is an input (a pass-through)
        "aten.arange.default",
        "aten.new_ones.default",
        "aten.full_like.default",
        "aten.zeros_like.default",
        "aten.masked_fill_.Scalar",
        "aten.to.dtype",
        "aten.to.dtype_layout",
        "aten.to.device",
        "aten._to_copy.default",
        "aten.dropout.default",
    ),
    # Transformers: torch.nn.TransformerEncoder, BERT, GPT-2, ViT, T5 (transformers built from config).
    "transformer": (
        "aten.linear.default",
        "aten.addmm.default",
        "aten.layer_norm.default",
        "aten.embedding.default",
        "aten.scaled_dot_product_attention.default",
    ),
    # The int8 variant's weight-only matrix product.
    "int8": ("aten._weight_int8pack_mm.default",),
}

#: Every operator a program may use.
ALLOWED_OPERATORS: frozenset[str] = frozenset(op for ops in _FAMILIES.values() for op in ops)


def check_operator(name: str) -> None:
    """InvalidArgument unless ``name`` is on the allow-list."""
    if name not in ALLOWED_OPERATORS:
        raise InvalidArgument(
            f"operator {name[:120]!r} is not on splitinfer's allow-list of vetted operators "
            f"({OPERATOR_SET}); programs may only use the operators of the model families it supports"
        )


def torch_release(version: str | None = None) -> str:
    """``major.minor`` of a torch version string (the running torch when None)."""
    text = version if version is not None else torch.__version__
    parts = text.split("+", 1)[0].split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise InvalidArgument(f"malformed torch version {text[:40]!r}")
    return f"{parts[0]}.{parts[1]}"


def check_compatible(torch_version: str, operator_set: str) -> None:
    """FailedPrecondition when a program written with ``torch_version`` and ``operator_set`` cannot load here."""
    if not isinstance(torch_version, str) or not isinstance(operator_set, str):
        raise InvalidArgument("a program's torch version and operator set must be strings")
    if operator_set not in _KNOWN_SETS:
        raise FailedPrecondition(
            f"program was written with operator set {operator_set[:60]!r}; this build knows {sorted(_KNOWN_SETS)}"
        )
    if torch_release(torch_version) != torch_release():
        raise FailedPrecondition(
            f"program was written with torch {torch_version[:40]}, this node runs torch {torch.__version__}: "
            "ATen operator schemas differ between releases; divide the model again with this torch"
        )
