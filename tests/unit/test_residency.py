"""The id-shape rule (docs/design.md, "Run residency") and id validation (docs/errors.md).

Pure: no database, no server. ``classify`` decides residency by the length
of the body after the first ``_`` and nothing else; ``validate_id`` rejects
what can never name a row, naming the field it was given.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane_resolver.domain.residency import (
    CUID_LENGTH,
    KSUID_LENGTH,
    MAX_ID_LENGTH,
    InvalidId,
    Residency,
    classify,
    validate_id,
)

ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def test_shape_lengths_are_the_spec_lengths() -> None:
    # The constants are the rule; pin them so a typo cannot move both the
    # rule and the tests that use the constants.
    assert (CUID_LENGTH, KSUID_LENGTH, MAX_ID_LENGTH) == (25, 27, 255)


def test_25_character_body_is_legacy() -> None:
    c = classify("run_" + "c" + "a" * 24)
    assert c.residency is Residency.LEGACY
    assert c.classifiable and c.route is Residency.LEGACY
    assert c.body == "c" + "a" * 24
    assert "25" in c.reason and "cuid" in c.reason


def test_27_character_body_is_new() -> None:
    c = classify("run_" + "2" * 27)
    assert c.residency is Residency.NEW
    assert c.classifiable and c.route is Residency.NEW
    assert "27" in c.reason and "ksuid" in c.reason


@pytest.mark.parametrize("length", [0, 21, 24, 26, 28, 40])
def test_other_lengths_are_unclassifiable_and_routed_legacy(length: int) -> None:
    c = classify("run_" + "x" * length)
    assert c.residency is None
    assert not c.classifiable
    # Unclassifiable ids take the two-step legacy read, which finds them
    # wherever they are (docs/design.md, "Reading runs").
    assert c.route is Residency.LEGACY
    assert len(c.body) == length
    assert "unclassifiable" in c.reason and str(length) in c.reason


def test_only_the_first_underscore_is_a_prefix_separator() -> None:
    # "run_abc_…": the body is everything after the FIRST "_", inner "_" kept.
    body = "abc_" + "d" * 21  # 25 characters including the inner underscore
    c = classify("run_" + body)
    assert c.body == body
    assert c.residency is Residency.LEGACY
    # Splitting at the last "_" instead would leave a 21-character body.
    assert classify("run_abc_" + "d" * 27).residency is None


def test_prefix_is_not_required() -> None:
    legacy = classify("c" + "b" * 24)
    assert legacy.body == legacy.id and legacy.residency is Residency.LEGACY
    new = classify("K" * 27)
    assert new.body == new.id and new.residency is Residency.NEW


def test_any_prefix_is_stripped_not_only_run() -> None:
    assert classify("batch_" + "c" * 25).residency is Residency.LEGACY
    assert classify("waitpoint_" + "Z" * 27).residency is Residency.NEW


def test_is_friendly_means_a_prefix_was_given() -> None:
    assert classify("run_" + "c" * 25).is_friendly is True
    assert classify("c" * 25).is_friendly is False
    # A leading "_" is an (empty) prefix: still the friendly form.
    assert classify("_" + "c" * 25).is_friendly is True


@given(
    st.integers(min_value=0, max_value=60).flatmap(
        lambda n: st.text(alphabet=ALPHANUMERIC, min_size=n, max_size=n)
    )
)
def test_alphanumeric_bodies_classify_by_length_only(body: str) -> None:
    c = classify("run_" + body)
    expected = {CUID_LENGTH: Residency.LEGACY, KSUID_LENGTH: Residency.NEW}.get(len(body))
    assert c.body == body
    assert c.residency is expected
    assert c.route is (expected or Residency.LEGACY)
    assert c.is_friendly


# ----------------------------------------------------------------- validate_id


def test_validate_id_returns_the_value_unchanged() -> None:
    assert validate_id("run_cm4abc-DEF_9") == "run_cm4abc-DEF_9"


def test_validate_id_rejects_empty_naming_the_field() -> None:
    with pytest.raises(InvalidId, match="environment_id is empty"):
        validate_id("", field="environment_id")


def test_validate_id_accepts_255_characters() -> None:
    value = "a" * MAX_ID_LENGTH
    assert validate_id(value, field="run_id") == value


def test_validate_id_rejects_256_characters_naming_the_field() -> None:
    with pytest.raises(InvalidId) as info:
        validate_id("a" * 256, field="run_id")
    message = str(info.value)
    assert message.startswith("run_id ")
    assert "256" in message and "255" in message


@pytest.mark.parametrize(
    "value",
    [
        "run cm4",
        "run/../x",
        "ru\u00e9n",
        "a.b",
        "a;DROP",
        "tab\there",
        "new\nline",
        "x'",
        "é" * 3,
        "\x00",
    ],
)
def test_validate_id_rejects_disallowed_characters_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidId) as info:
        validate_id(value, field="waitpoint_id")
    message = str(info.value)
    assert message.startswith("waitpoint_id ")
    assert "A-Z" in message


def test_validate_id_default_field_name_is_id() -> None:
    with pytest.raises(InvalidId, match=r"^id is empty"):
        validate_id("")
