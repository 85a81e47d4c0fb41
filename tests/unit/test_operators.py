"""The operator allow-list, family by family: every operator that export (and the variant transforms)
produce for the model families splitinfer supports is on the list, and every entry on the list is produced
by one of them, so the list grows only deliberately: a new family comes with its entries and this test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from splitinfer.program import export_program
from splitinfer.program.operators import _FAMILIES, ALLOWED_OPERATORS
from splitinfer.variants import make_variant
from splitinfer.zoo import SHARED_BACKBONE_MODELS, ZOO, resnet18
from splitinfer.zoo.detector import detector

pytest.importorskip("transformers")


def _families() -> dict[str, Callable[[], tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]]]:
    from tests.unit import _user_models

    found: dict[str, Callable[[], tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]]] = {}
    for name, factory in {**ZOO, **SHARED_BACKBONE_MODELS, "detector": detector}.items():
        found[name] = lambda f=factory: (*f(), {})  # type: ignore[misc]
    found["resnet18"] = lambda: (*resnet18(64), {})
    found["pass_through"] = lambda: (_PassThrough(), (torch.randn(2),), {})
    found["avg_pool_head"] = lambda: (_avg_pool_head(), (torch.randn(1, 3, 16, 16),), {})
    for name in _user_models.__all__:
        found[name] = lambda n=name: (getattr(_user_models, n)()[0], (), getattr(_user_models, n)()[1])  # type: ignore[misc]
    return found


#: Variants exported per family beyond fp32 (their transforms add casts, int8 matmuls and gathers).
VARIANTS = {"tiny_cnn": ("fp16", "int8"), "gpt2": ("fp16", "int8"), "t5_encoder": ("fp16", "int8"), "bert": ("int8",)}


def _avg_pool_head() -> torch.nn.Module:
    """A CNN pooling with a fixed window (nn.AvgPool2d), as Inception- and VGG-style heads do."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(16),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()


class _PassThrough(torch.nn.Module):
    """Returns one of its inputs as an output: export copies it (aten.clone) so that it has a name to send."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"same": x, "double": x * 2}


@pytest.fixture(scope="module")
def produced() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for name, build in _families().items():
        model, args, kwargs = build()
        programs = [export_program(model, args, kwargs)]
        programs += [make_variant(model, args, kind, kwargs) for kind in VARIANTS.get(name, ())]
        for program in programs:
            for node in program.nodes:
                used.setdefault(node.op, set()).add(name)
    return used


def test_every_operator_the_families_need_is_allowed(produced: dict[str, set[str]]) -> None:
    missing = {op: sorted(models) for op, models in produced.items() if op not in ALLOWED_OPERATORS}
    assert not missing, f"add these deliberately, with their family: {missing}"


def test_every_allowed_operator_is_needed_by_a_family(produced: dict[str, set[str]]) -> None:
    unused = sorted(ALLOWED_OPERATORS - set(produced))
    assert not unused, f"no supported model produces {unused}: take them off the list"


def test_families_do_not_overlap_and_nothing_reads_files() -> None:
    entries = [op for ops in _FAMILIES.values() for op in ops]
    assert len(entries) == len(set(entries))
    assert not [op for op in ALLOWED_OPERATORS if any(w in op for w in ("file", "save", "load", "storage", "_local"))]
