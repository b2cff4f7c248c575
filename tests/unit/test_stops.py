"""Unit tests of worker.stops.StopFilter: stop sequences applied across delta boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.stops import StopFilter

# A small alphabet makes stops match often; astral characters are one code point each.
CHARS = st.sampled_from(["a", "b", "c", " ", "\n", "é", "日", "😀", "𝄞"]) | st.characters()


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def apply(stops: Sequence[str], deltas: Sequence[str]) -> tuple[list[str], StopFilter]:
    """What ``feed`` returned for each delta, then ``flush`` if no stop matched."""
    stop_filter = StopFilter(stops)
    pieces = [stop_filter.feed(delta) for delta in deltas]
    if not stop_filter.stopped:
        pieces.append(stop_filter.flush())
    return pieces, stop_filter


def first_match(text: str, stops: Sequence[str]) -> int:
    """Where the earliest stop occurrence starts, or ``len(text)`` if none occurs."""
    return min((text.find(stop) for stop in stops if stop in text), default=len(text))


def has_inner_stop(stops: Sequence[str]) -> bool:
    """Whether a stop occurs inside another one, neither at its start nor at its end."""
    return any(
        inner != outer and inner in outer[1:-1] for inner in stops for outer in stops if outer
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    text = draw(st.text(CHARS, max_size=40))
    random_stop = st.text(CHARS, min_size=1, max_size=5)
    if text:  # a substring of the text, so that it really matches
        start = st.integers(0, len(text) - 1)
        substring = st.tuples(start, st.integers(1, 5)).map(lambda p: text[p[0] : p[0] + p[1]])
        random_stop = random_stop | substring
    stops = draw(st.lists(random_stop, min_size=1, max_size=3))
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=12))
    return text, stops, split_at(text, cuts)


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_output_is_the_text_before_the_first_stop(case: tuple[str, list[str], list[str]]) -> None:
    text, stops, deltas = case
    pieces, stop_filter = apply(stops, deltas)
    output = "".join(pieces)
    assert output == text[: first_match(text, stops)]
    assert stop_filter.stopped == any(stop in text for stop in stops)
    for stop in stops:
        assert stop not in output


@settings(max_examples=300, deadline=None)
@given(scenarios())
@example(("0", ["0", "00"], ["0"]))
@example(("x00", ["0", "00"], ["x", "0", "0"]))
@example(("xxabc", ["ab", "abc"], ["xxa", "bc"]))
def test_holds_back_only_a_possible_stop_start(case: tuple[str, list[str], list[str]]) -> None:
    text, stops, deltas = case
    expected = text[: first_match(text, stops)]
    stop_filter = StopFilter(stops)
    consumed = released = ""
    for delta in deltas:
        consumed += delta
        released += stop_filter.feed(delta)
        if stop_filter.stopped:
            assert released == expected
            return
        assert consumed.startswith(released)
        held = consumed[len(released) :]
        assert len(held) < max(map(len, stops))
        assert held == "" or any(stop.startswith(held) and stop != held for stop in stops)
        # Not stopped although a stop occurred: only a stop that may still start earlier holds
        # the cut back, so what is held starts before the match.
        match = first_match(consumed, stops)
        assert match == len(consumed) or len(released) < match
    assert released + stop_filter.flush() == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(CHARS, max_size=8), max_size=8))
def test_no_stops_pass_everything_through(deltas: list[str]) -> None:
    for stops in ([], [""]):
        stop_filter = StopFilter(stops)
        assert [stop_filter.feed(delta) for delta in deltas] == deltas
        assert stop_filter.flush() == ""
        assert not stop_filter.stopped


@pytest.mark.parametrize(
    ("stops", "deltas"),
    [
        (["0", "00"], ["0"]),
        (["00", "0"], ["x", "0"]),
        (["ab", "abc"], ["xx", "ab"]),
        (["END"], ["Hello E", "N", "D"]),
        (["abc", "b"], ["a", "bc"]),
    ],
)
def test_stopped_on_the_delta_that_completes_the_stop(stops: list[str], deltas: list[str]) -> None:
    stop_filter = StopFilter(stops)
    for delta in deltas[:-1]:
        stop_filter.feed(delta)
        assert not stop_filter.stopped
    stop_filter.feed(deltas[-1])
    assert stop_filter.stopped


def test_stop_split_over_three_deltas() -> None:
    pieces, stop_filter = apply(["END"], ["Hello E", "N", "D and more", " and more"])
    assert pieces == ["Hello ", "", "", ""]
    assert stop_filter.stopped


@pytest.mark.parametrize("deltas", [["xxabc"], ["xxa", "bc"], ["xx", "ab", "c"], list("xxabc")])
@pytest.mark.parametrize("stops", [["ab", "abc"], ["abc", "ab"]])
def test_overlapping_stop_prefixes(stops: list[str], deltas: list[str]) -> None:
    pieces, stop_filter = apply(stops, deltas)
    assert "".join(pieces) == "xx"
    assert stop_filter.stopped


@pytest.mark.parametrize("deltas", [["Hi there"], ["H", "i there"], ["Hi"]])
def test_stop_at_the_very_start(deltas: list[str]) -> None:
    pieces, stop_filter = apply(["Hi"], deltas)
    assert "".join(pieces) == ""
    assert stop_filter.stopped


def test_nothing_after_a_stop() -> None:
    stop_filter = StopFilter(["\n\n"])
    assert stop_filter.feed("one\n\ntwo") == "one"
    assert stop_filter.feed("three") == ""
    assert stop_filter.flush() == ""


def test_held_back_then_released_by_a_non_matching_continuation() -> None:
    stop_filter = StopFilter(["END"])
    assert stop_filter.feed("Hello E") == "Hello "
    assert stop_filter.feed("N") == ""
    assert stop_filter.feed("o way") == "ENo way"
    assert stop_filter.flush() == ""
    assert not stop_filter.stopped


def test_held_back_at_the_end_is_flushed() -> None:
    stop_filter = StopFilter(["😀😀"])
    assert stop_filter.feed("a😀") == "a"
    assert stop_filter.feed("b😀") == "😀b"
    assert stop_filter.flush() == "😀"
    assert not stop_filter.stopped


def test_stop_completed_inside_a_longer_stop() -> None:
    assert "".join(apply(["abcd", "c"], ["abcd"])[0]) == ""
    pieces, stop_filter = apply(["abcd", "c"], ["abc", "d"])
    assert stop_filter.stopped
    assert "".join(pieces) == ""


@settings(max_examples=300, deadline=None)
@given(scenarios())
@example(("xx<stop>", ["<stop>", "t"], ["xx<st", "op>"]))
def test_output_does_not_depend_on_how_the_text_is_split(
    case: tuple[str, list[str], list[str]],
) -> None:
    text, stops, deltas = case
    assert "".join(apply(stops, deltas)[0]) == "".join(apply(stops, [text])[0])
