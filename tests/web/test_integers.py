"""Whole numbers: declared as 64-bit integers, and 1.0 accepted where an integer is (#24)."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from shoal.web import ApiError
from shoal.web.jsonio import convert
from shoal.web.openapi import INT64, _schema_for


class Body(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=0)]
    ratio: float = 0.0
    sizes: list[int] = []
    either: int | None = None


def test_integral_floats_are_integers_where_an_integer_is_declared():
    got = convert({"count": 2.0, "ratio": 3.0, "sizes": [1.0, 2e3], "either": 4.0}, Body)
    assert got == Body(2, 3.0, [1, 2000], 4) and type(got.count) is int and type(got.ratio) is float
    assert convert({"count": "7.0"}, Body, where="query").count == 7


@pytest.mark.parametrize("bad", [1.5, float(2**60), "2", True])
def test_other_numbers_and_types_are_still_refused(bad):
    with pytest.raises(ApiError) as err:
        convert({"count": bad}, Body)
    assert err.value.status == 400 and "count" in err.value.message


def test_integers_in_the_schema_carry_64_bit_bounds():
    components: dict = {}
    _schema_for(Body, components)
    props = components["Body"]["properties"]
    assert props["count"]["type"] == "integer" and props["count"]["minimum"] == 0
    assert props["count"]["maximum"] == INT64[1] and props["sizes"]["items"]["minimum"] == INT64[0]
