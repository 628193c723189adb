"""JSON in and out: orjson for bytes, msgspec for typed validation.

Bodies are parsed with orjson (clear "not JSON" errors) and converted into msgspec Structs
with strict types, so a string never silently becomes a number. One loosening, because JSON
has a single number type and JSON Schema calls 1.0 an integer: a float with no fractional part
is accepted where an integer is declared (`integral_floats`), within +-2**53 where a double
holds every integer exactly; 1.5 is still refused, and so is 1e300.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import msgspec
import orjson
from msgspec import inspect as mi
from starlette.responses import Response

from shoal.web.errors import ApiError


def dumps(obj: Any) -> bytes:
    """Encode anything a handler returns: Structs, dicts, lists, scalars."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return orjson.dumps(msgspec.to_builtins(obj))


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise ApiError(400, "request body is empty; a JSON document is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


EXACT = 2**53  # beyond it a double skips integers: 9007199254740993.0 is not that number
_SEQUENCES = (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)
_MAPPINGS = (mi.StructType, mi.TypedDictType, mi.DataclassType, mi.NamedTupleType)


@functools.lru_cache(maxsize=1024)
def _info(typ: Any) -> mi.Type | None:
    try:
        info = mi.type_info(typ)
    except Exception:  # a type msgspec cannot describe: convert() will say what is wrong
        return None
    return info if _has_int(info, set()) else None


def _has_int(t: mi.Type, seen: set[int]) -> bool:
    if isinstance(t, mi.IntType):
        return True
    if id(t) in seen:
        return False
    seen.add(id(t))
    if isinstance(t, mi.UnionType):
        return any(_has_int(x, seen) for x in t.types)
    if isinstance(t, _SEQUENCES):
        return _has_int(t.item_type, seen)
    if isinstance(t, mi.TupleType):
        return any(_has_int(x, seen) for x in t.item_types)
    if isinstance(t, mi.DictType):
        return _has_int(t.value_type, seen)
    if isinstance(t, _MAPPINGS):
        return any(_has_int(f.type, seen) for f in t.fields)
    return False


def _whole(value: Any, text: bool) -> Any:
    """value as an int if it is a float (or, in a query string, a number) with no fraction."""
    if text and isinstance(value, str) and ("." in value or "e" in value.lower()):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if _exact(number) else value
    if type(value) is float and _exact(value):
        return int(value)
    return value


def _exact(number: float) -> bool:
    return math.isfinite(number) and number.is_integer() and abs(number) <= EXACT


def _integral(data: Any, t: mi.Type, text: bool) -> Any:
    if isinstance(t, mi.IntType):
        return _whole(data, text)
    if isinstance(t, mi.UnionType):
        if isinstance(data, (float, str)):
            kinds = {type(x) for x in t.types}
            if (
                mi.IntType in kinds
                and mi.FloatType not in kinds
                and not (isinstance(data, str) and mi.StrType in kinds)
            ):
                return _whole(data, text)
            return data
        if isinstance(data, dict):
            members = [x for x in t.types if isinstance(x, (*_MAPPINGS, mi.DictType))]
            tagged = [x for x in members if getattr(x, "tag_field", None)]
            for x in tagged:
                if data.get(x.tag_field) == x.tag:
                    return _integral(data, x, text)
            if len(members) == 1:
                return _integral(data, members[0], text)
            return data
        if isinstance(data, list):
            members = [x for x in t.types if isinstance(x, (*_SEQUENCES, mi.TupleType))]
            return _integral(data, members[0], text) if len(members) == 1 else data
        return data
    if isinstance(data, list):
        if isinstance(t, _SEQUENCES):
            return [_integral(x, t.item_type, text) for x in data]
        if isinstance(t, mi.TupleType) and len(t.item_types) == len(data):
            return [_integral(x, it, text) for x, it in zip(data, t.item_types, strict=True)]
        return data
    if isinstance(data, dict):
        if isinstance(t, mi.DictType):
            return {k: _integral(v, t.value_type, text) for k, v in data.items()}
        if isinstance(t, _MAPPINGS):
            fields = {f.encode_name: f.type for f in t.fields}
            return {k: _integral(v, fields[k], text) if k in fields else v for k, v in data.items()}
    return data


def integral_floats(data: Any, typ: Any, *, text: bool = False) -> Any:
    """`data` with whole-number floats (1.0, 2e3) turned into ints where `typ` declares an int
    (`text`: query values, where "2.0" is the same number)."""
    info = _info(typ)
    return data if info is None else _integral(data, info, text)


def convert(data: Any, typ: Any, *, where: str = "body", status: int = 400) -> Any:
    """Validate `data` into `typ`; a ValidationError becomes an ApiError that names the field."""
    try:
        data = integral_floats(data, typ, text=where != "body")
        return msgspec.convert(data, typ, strict=where == "body")
    except msgspec.ValidationError as exc:
        raise ApiError(status, f"invalid {where}: {exc}", code="VALIDATION_ERROR") from None
