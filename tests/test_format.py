"""Document formats: stamping, and a clear refusal of every document this version cannot read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorax_core._format import DocumentFormat

PLAN = DocumentFormat("lorax_core.rank_plan", 2)
META = DocumentFormat("lorax_core.hidden_states", 1, version_key="format_version", text=True)


@given(
    doc=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=5),
    version=st.integers(1, 2),
)
def test_stamped_documents_check_after_a_json_round_trip(doc, version) -> None:  # type: ignore[no-untyped-def]
    fmt = DocumentFormat(PLAN.name, version)
    stamped = fmt.stamp(doc)
    assert list(stamped)[:2] == ["format", "version"]
    assert {k: v for k, v in stamped.items() if k not in ("format", "version")} == {
        k: v for k, v in doc.items() if k not in ("format", "version")
    }
    assert PLAN.check(json.loads(json.dumps(stamped)), "doc.json") == version
    meta = META.stamp({k: str(v) for k, v in doc.items()})
    assert meta["format_version"] == "1" and META.check(meta, "h.safetensors") == 1


@given(version=st.integers(3, 10**6))
def test_newer_versions_are_refused(version: int) -> None:
    with pytest.raises(ValueError, match=rf"^p: lorax_core.rank_plan version {version} is newer"):
        PLAN.check({"format": PLAN.name, "version": version}, "p")
    with pytest.raises(ValueError, match="upgrade lorax_core"):
        META.check({"format": META.name, "format_version": str(version)}, "p")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], r"not a lorax_core.rank_plan document \(expected a JSON object, got list\)"),
        ({}, r"not a lorax_core.rank_plan document \(no format field\)"),
        ({"format": "peft"}, "format 'peft'"),
        ({"format": PLAN.name}, "has no 'version'"),
        ({"format": PLAN.name, "version": "1"}, "version must be an int, got '1'"),
        ({"format": PLAN.name, "version": True}, "version must be an int, got True"),
        ({"format": PLAN.name, "version": 1.0}, "version must be an int, got 1.0"),
        ({"format": PLAN.name, "version": 0}, r"version 0 is older than this lorax_core reads"),
        ({"format": PLAN.name, "version": -4}, "older"),
        ({"format": PLAN.name, "version": 1}, "lacks 'layers', 'rule'"),
    ],
)
def test_bad_documents(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        PLAN.check(doc, "plan.json", required=("layers", "rule"))
    assert str(err.value).startswith("plan.json: ") and "\n" not in str(err.value)


def test_text_versions_and_numpy() -> None:
    assert PLAN.check({"format": PLAN.name, "version": np.int64(1)}, "p") == 1
    for bad in (1, "1.0", "٣", " 1", ""):
        with pytest.raises(ValueError, match="format_version must be a decimal string"):
            META.check({"format": META.name, "format_version": bad}, "h")
    assert META.fields() == {"format": META.name, "format_version": "1"}
    assert PLAN.stamp({"version": 9, "format": "x", "a": 1}) == {
        "format": PLAN.name,
        "version": 2,
        "a": 1,
    }


def test_the_format_itself_is_checked() -> None:
    with pytest.raises(ValueError, match="oldest <= version"):
        DocumentFormat("x", 1, oldest=2)
    with pytest.raises(TypeError, match="must be ints"):
        DocumentFormat("x", True)  # type: ignore[arg-type]
    legacy = DocumentFormat("x", 3, oldest=2)
    assert legacy.check({"format": "x", "version": 2}, "d") == 2
    with pytest.raises(ValueError, match=r"older than this lorax_core reads \(2 to 3\)"):
        legacy.check({"format": "x", "version": 1}, "d")
