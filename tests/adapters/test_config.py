"""AdapterConfig validation, JSON round trip, per-module rank/alpha/seed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.adapters import AdapterConfig
from tests.adapters.reference import VOCAB


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "lorax"}, ValueError, "AdapterConfig: method must be one of 'lora', 'dora'"),
        ({"r": 0}, ValueError, "AdapterConfig: r must be an int >= 1, got 0"),
        ({"r": -3}, ValueError, "AdapterConfig: r must be an int >= 1, got -3"),
        ({"r": 2.0}, TypeError, r"AdapterConfig: r must be an int >= 1, got 2\.0 \(float\)"),
        ({"r": True}, TypeError, "AdapterConfig: r must be an int >= 1, got True"),
        ({"alpha": 0.0}, ValueError, "AdapterConfig: alpha must be a finite number > 0"),
        ({"alpha": float("inf")}, ValueError, "AdapterConfig: alpha must be a finite number"),
        ({"target_modules": None}, ValueError, "target_modules must be a list of module names"),
        ({"target_modules": []}, ValueError, "target_modules must be a non-empty list, got"),
        ({"target_modules": "("}, ValueError, "target_modules must be a valid regular expression"),
        ({"target_modules": [1]}, TypeError, "target_modules entries must be non-empty strings"),
        ({"rank_pattern": {"query": 0}}, ValueError, r"rank_pattern\['query'\] must be an int"),
        ({"rank_pattern": {"query": 2.5}}, TypeError, r"rank_pattern\['query'\] must be an int"),
        ({"rank_pattern": ["query"]}, TypeError, "rank_pattern must be None or a dict"),
        ({"alpha_pattern": {"query": -1.0}}, ValueError, r"alpha_pattern\['query'\] must be"),
        ({"init": "random"}, ValueError, "AdapterConfig: init must be one of 'default'"),
        (
            {"method": "dora", "init": "pissa"},
            ValueError,
            "init must be one of 'default' for method 'dora', got 'pissa'",
        ),
        (
            {"method": "lora", "init": "nlora"},
            ValueError,
            "init must be one of 'default', 'nystrom', 'pissa' for method 'lora', got 'nlora'",
        ),
        ({"dropout": 1.0}, ValueError, r"dropout must be a finite number in \[0\.0, 1\.0\)"),
        ({"dropout": -0.1}, ValueError, "dropout must be a finite number in"),
        ({"use_rslora": 1}, TypeError, "AdapterConfig: use_rslora must be a bool, got 1"),
        (
            {"train": "intermediate"},
            ValueError,
            "train must be 'all' for method 'lora' \\(method 'slora' takes it\\)",
        ),
        ({"method": "slora", "train": "some"}, ValueError, "train must be one of 'all'"),
        ({"r_max": 16}, ValueError, "r_max must be None for method 'lora' \\(method 'svd'"),
        ({"detach_norm": False}, ValueError, "detach_norm must be True for method 'lora'"),
        ({"method": "svd", "r_max": 4}, ValueError, "r_max must be an int >= 8, got 4"),
        (
            {"method": "svd", "r_max": 10, "rank_pattern": {"query": 12}},
            ValueError,
            "r_max must be an int >= 12, got 10",
        ),
        ({"init_options": [1]}, TypeError, "init_options must be None or a dict"),
        (
            {"init_options": {"seed": 1}},
            ValueError,
            "init_options keys must be option names .* 'seed'",
        ),
        ({"init_options": {1: 2}}, ValueError, "init_options keys must be option names .*, got 1"),
        ({"seed": -1}, ValueError, "AdapterConfig: seed must be an int >= 0, got -1"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], error: type, message: str) -> None:
    base: dict[str, Any] = {"target_modules": ["query"]}
    with pytest.raises(error, match=message):
        AdapterConfig(**{**base, **kwargs})


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(
        ValueError, match=r"data keys must be AdapterConfig fields, got unknown \['rank'\]"
    ):
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
