"""Module-name matching with PEFT's semantics, against PEFT's own functions."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

from lorax_core.adapters.patterns import (
    matches_module_list,
    module_selected,
    pattern_key,
    suffix_key,
)
from tests.adapters.reference import NAMES, VOCAB


@given(
    targets=st.one_of(
        st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4),
        st.sampled_from([r".*\.(query|value)", r"encoder\.layer\.[0-2]\..*", "pooler.*", "x"]),
    ),
    excludes=st.one_of(
        st.none(),
        st.lists(st.sampled_from(VOCAB), min_size=1, max_size=2),
        st.just(r".*layer\.1\..*"),
    ),
)
def test_target_selection_equals_peft(targets: str | list[str], excludes: Any) -> None:
    peft_config = LoraConfig(target_modules=targets, exclude_modules=excludes)
    for name in NAMES:
        peft_says = check_target_module_exists(peft_config, name)
        expected = bool(peft_says) and type(peft_says).__name__ != "_ExcludedModule"
        assert module_selected(targets, excludes, name) == expected, name


@given(
    keys=st.lists(
        st.sampled_from(
            [*VOCAB, *(f"^{n}$" for n in NAMES[:8]), r"layer\.[0-3]\.attention\.self\.query"]
        ),
        unique=True,
        max_size=5,
    )
)
def test_pattern_key_equals_peft(keys: list[str]) -> None:
    for name in NAMES:
        peft_key = get_pattern_key(keys, name)
        expected = peft_key if peft_key in keys else None
        # PEFT returns the name itself when nothing matched; a key equal to the name matched.
        assert pattern_key(keys, name) == expected, name


@given(
    prefix=st.sampled_from(["", "model.", "bert.", "base_model.model.", "base_model.model.bert."]),
    planned=st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True),
)
def test_suffix_keys_give_each_module_its_own_rank_in_any_wrapper(
    prefix: str, planned: list[str]
) -> None:
    """An escaped backbone-relative name is the key of that module and of no other, with
    PEFT's ``get_pattern_key`` and ours, whatever prefix the wrapper adds."""
    keys = [suffix_key(name) for name in planned]
    for name in NAMES:
        expected = suffix_key(name) if name in planned else None
        peft_key = get_pattern_key(keys, prefix + name)
        assert (peft_key if peft_key in keys else None) == expected, name
        assert pattern_key(keys, prefix + name) == expected, name
        assert matches_module_list([name], prefix + name)  # PEFT's target_modules rule
