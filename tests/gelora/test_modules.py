"""Linear modules, their blocks and target selection, against PEFT's own matcher."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.gelora import plan_ranks
from lorax_core.gelora.modules import block_of, linear_modules, select_targets


def test_targets_on_real_model(minilm: torch.nn.Module) -> None:
    shapes = linear_modules(minilm)
    assert len(shapes) == 36  # 6 blocks × (q, k, v, attention out, intermediate, output)
    assert "pooler.dense" not in shapes
    assert shapes["encoder.layer.0.intermediate.dense"] == (384, 1536)
    assert select_targets(shapes, ["query", "value"]) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")
    ]
    regex = select_targets(shapes, r"encoder\.layer\.[0-2]\..*dense")
    assert len(regex) == 9
    with pytest.raises(ValueError, match="outside blocks"):
        plan_ranks([10.0, 11.0], minilm, ["query"])


def test_names_are_relative_to_the_backbone(minilm: torch.nn.Module, minilm_dir) -> None:  # type: ignore[no-untyped-def]
    """The base encoder, its classification model (backbone ``bert``) and a PEFT model around
    that list the same modules under the same names."""
    import peft
    from transformers import AutoModelForSequenceClassification

    from lorax_core.adapters.patterns import backbone_prefix

    task = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=3)
    config = peft.LoraConfig(target_modules=["query", "value"], task_type="SEQ_CLS")
    wrapped = peft.get_peft_model(task, config)
    assert backbone_prefix(minilm) == ""
    assert backbone_prefix(task) == "bert."
    assert backbone_prefix(wrapped) == "base_model.model.bert."
    shapes = linear_modules(minilm)
    assert linear_modules(task) == shapes
    assert linear_modules(wrapped) == shapes  # LoRA layers count as the Linear they wrap


NAMES = [
    f"encoder.layer.{i}.{part}"
    for i in range(3)
    for part in ("attention.self.query", "attention.self.value", "output.dense")
]
SHAPES = {name: (4, 4) for name in NAMES}


@given(
    targets=st.lists(
        st.sampled_from(["query", "value", "dense", "output.dense", "self.query", "layer.1"]),
        min_size=1,
        max_size=3,
        unique=True,
    )
    | st.sampled_from([r".*\.query", r"encoder\.layer\.[01]\..*", r".*(value|dense)", "query"])
)
def test_selection_matches_peft(targets: str | list[str]) -> None:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=targets)
    expected = [name for name in NAMES if check_target_module_exists(config, name)]
    if isinstance(targets, list):
        unmatched = [
            t
            for t in targets
            if not any(
                check_target_module_exists(LoraConfig(target_modules=[t]), name) for name in NAMES
            )
        ]
        if unmatched:
            with pytest.raises(ValueError, match="match no linear module"):
                select_targets(SHAPES, targets)
            return
    if not expected:
        with pytest.raises(ValueError, match="selects no linear module"):
            select_targets(SHAPES, targets)
        return
    assert select_targets(SHAPES, targets) == expected


def test_selection_errors() -> None:
    assert select_targets(SHAPES, None) == select_targets(SHAPES, "all-linear") == NAMES
    with pytest.raises(
        ValueError, match=r"^select_targets: target_modules must be a valid regular"
    ):
        select_targets(SHAPES, "query(")
    with pytest.raises(TypeError, match=r"^select_targets: target_modules must be None, a regular"):
        select_targets(SHAPES, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sequence of module names, got"):
        select_targets(SHAPES, ["query", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^linear_modules: model must be a torch.nn.Module"):
        linear_modules({"a": (1, 2)})  # type: ignore[arg-type]


@given(index=st.integers(0, 10_000), prefix=st.sampled_from(["encoder.layer", "model.layers", "h"]))
def test_block_of(index: int, prefix: str) -> None:
    assert block_of(f"{prefix}.{index}.mlp.fc1") == index + 1
    assert block_of(f"{prefix}.x{index}.mlp") is None
    assert block_of("pooler.dense") is None
