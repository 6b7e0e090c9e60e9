"""AdapterConfig validation, JSON round trip, and PEFT-compatible name matching."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

from lorax_core.adapters import AdapterConfig
from lorax_core.adapters.patterns import module_selected, pattern_key

# Module names of a 6-layer BERT encoder (MiniLM), plus the pooler.
SUFFIXES = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
NAMES = [f"encoder.layer.{i}.{s}" for i in range(6) for s in SUFFIXES] + ["pooler.dense"]
# Selector vocabulary: leaf names, dotted suffixes, full names, a non-match.
VOCAB = ["query", "key", "value", "dense", "self.query", "output.dense", "pooler.dense", "nope"]
VOCAB += NAMES[:3]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "lorax"}, ValueError, "method must be one of"),
        ({"r": 0}, ValueError, "r must be a positive int"),
        ({"r": -3}, ValueError, "r must be a positive int"),
        ({"r": 2.0}, ValueError, "r must be a positive int"),
        ({"r": True}, ValueError, "r must be a positive int"),
        ({"alpha": 0.0}, ValueError, "alpha must be"),
        ({"alpha": float("inf")}, ValueError, "alpha must be"),
        ({"target_modules": None}, ValueError, "target_modules is required"),
        ({"target_modules": []}, ValueError, "target_modules must not be empty"),
        ({"target_modules": "("}, ValueError, "target_modules.*not a valid regular expression"),
        ({"target_modules": [1]}, TypeError, "target_modules entries"),
        ({"rank_pattern": {"query": 0}}, ValueError, r"rank_pattern\['query'\]"),
        ({"rank_pattern": {"query": 2.5}}, ValueError, r"rank_pattern\['query'\]"),
        ({"rank_pattern": ["query"]}, TypeError, "rank_pattern must be a dict"),
        ({"alpha_pattern": {"query": -1.0}}, ValueError, r"alpha_pattern\['query'\]"),
        ({"init": "random"}, ValueError, "init must be one of"),
        ({"method": "dora", "init": "pissa"}, ValueError, "init='pissa' is only available"),
        ({"dropout": 1.0}, ValueError, "dropout must be in"),
        ({"dropout": -0.1}, ValueError, "dropout must be in"),
        ({"use_rslora": 1}, TypeError, "use_rslora must be a bool"),
        ({"train": "intermediate"}, ValueError, "requires method='slora'"),
        ({"method": "slora", "train": "some"}, ValueError, "train must be one of"),
        ({"r_max": 16}, ValueError, "r_max applies only to method='svd'"),
        ({"method": "svd", "r_max": 4}, ValueError, "r_max must be an int"),
        (
            {"method": "svd", "r_max": 10, "rank_pattern": {"query": 12}},
            ValueError,
            "r_max must be an int",
        ),
        ({"init_options": [1]}, TypeError, "init_options must be a dict"),
        ({"seed": -1}, ValueError, "seed must be"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], error: type, message: str) -> None:
    base: dict[str, Any] = {"target_modules": ["query"]}
    with pytest.raises(error, match=message):
        AdapterConfig(**{**base, **kwargs})


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown AdapterConfig fields: \['rank'\]"):
        AdapterConfig.from_dict({"target_modules": ["query"], "rank": 4})


configs = st.builds(
    AdapterConfig,
    method=st.sampled_from(["lora", "slora", "dora", "svd"]),
    r=st.integers(1, 64),
    alpha=st.floats(0.5, 128.0),
    target_modules=st.one_of(
        st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4),
        st.sampled_from([r".*\.query", r"encoder\.layer\.[0-2]\..*"]),
    ),
    rank_pattern=st.one_of(st.none(), st.dictionaries(st.sampled_from(VOCAB), st.integers(1, 8))),
    dropout=st.floats(0.0, 0.9),
    use_rslora=st.booleans(),
    seed=st.integers(0, 2**31),
)


@given(configs)
def test_config_json_round_trip(config: AdapterConfig) -> None:
    text = json.dumps(config.to_dict())
    assert AdapterConfig.from_dict(json.loads(text)) == config


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


def test_rank_and_alpha_for() -> None:
    config = AdapterConfig(
        target_modules=["query", "value"],
        r=8,
        alpha=16,
        rank_pattern={"^encoder.layer.0.attention.self.query$": 2, "value": 6},
        alpha_pattern={"layer.1.attention.self.query": 3.0},
    )
    assert config.rank_for("encoder.layer.0.attention.self.query") == 2
    assert config.rank_for("encoder.layer.1.attention.self.query") == 8
    assert config.rank_for("encoder.layer.3.attention.self.value") == 6
    assert config.alpha_for("encoder.layer.1.attention.self.query") == 3.0
    assert config.alpha_for("encoder.layer.0.attention.self.query") == 16.0


def test_module_seed_is_stable_and_distinct() -> None:
    config = AdapterConfig(target_modules=["query"], seed=3)
    a = config.module_seed("encoder.layer.0.attention.self.query")
    assert a == AdapterConfig(target_modules=["value"], seed=3).module_seed(
        "encoder.layer.0.attention.self.query"
    )
    assert a != config.module_seed("encoder.layer.1.attention.self.query")
    assert a != AdapterConfig(target_modules=["query"], seed=4).module_seed(
        "encoder.layer.0.attention.self.query"
    )
    assert 0 <= a < 2**63
