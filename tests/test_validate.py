"""osscar.validate: each check accepts exactly the values its definition names and its error names the value."""

from __future__ import annotations

import math

import pytest

from osscar import validate

CASES = [  # (check, args, good values, bad values)
    (validate.positive_int, (), [1, 7, 10**12], [0, -1, 1.0, True, None, "3"]),
    (validate.nonneg_int, (), [0, 1, 99], [-1, 0.5, False, None]),
    (validate.fraction, (), [0, 0.0, 0.5, 0.999, None], [1, 1.0, -0.01, math.nan, True, "0.5"]),
    (validate.finite_nonneg, (), [0, 0.0, 1e-2, 5], [-1e-9, math.inf, math.nan, True, None]),
    (validate.finite_above, (1,), [1.0001, 2, 50.0], [1, 1.0, 0.5, math.inf, math.nan, True]),
    (validate.one_of, (("a", "b"),), ["a", "b"], ["c", None, "A"]),
    (validate.int_pair, (), [(1, 1), (8, 512)], [(1,), (1, 0), [1, 2], (1, 2, 3), (True, 4), (1.0, 2)]),
]


@pytest.mark.parametrize("check, extra, good, bad", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_check_accepts_its_domain_and_names_the_value(check, extra, good, bad):
    for v in good:
        check("knob", v, *extra)
    for v in bad:
        with pytest.raises(ValueError, match=r"^knob"):
            check("knob", v, *extra)


def test_positive_int_may_allow_none_and_messages_say_what_was_given():
    validate.positive_int("n", None, allow_none=True)
    with pytest.raises(ValueError, match=r"n must be a positive integer, got 0"):
        validate.positive_int("n", 0, allow_none=True)
    with pytest.raises(ValueError, match=r"heldout_samples must be an integer ≥ 0 \(0: none\), got -1"):
        validate.nonneg_int("heldout_samples", -1, "0: none")
    with pytest.raises(ValueError, match=r"speedup must be a finite number > 1, got 1"):
        validate.finite_above("speedup", 1, 1)


@pytest.mark.parametrize("text, n", [("24GiB", 24 * 2**30), ("500MB", 500 * 10**6), (1.5, int(1.5 * 2**30)),
                                     ("32", 32 * 2**30), (" 2 kib ", 2048)])
def test_parse_bytes(text, n):
    assert validate.parse_bytes(text) == n
