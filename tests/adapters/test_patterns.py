"""Module-name matching with PEFT's semantics, against PEFT's own functions."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

from lorax_core.adapters.patterns import module_selected, pattern_key
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
