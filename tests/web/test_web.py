"""The shared web layer: envelopes, validation, limits, 404/405, OpenAPI, metrics, fast path."""

from __future__ import annotations

import pytest

from shoal.testing import asgi_client
from shoal.web import COMPUTE_ENVELOPE, DETAIL_ENVELOPE, STATE_ENVELOPE, Api, ApiError, create_app
from tests.web.example_service import create_app as example_app


@pytest.fixture
async def client(tmp_path):
    async with asgi_client(example_app({"data_dir": str(tmp_path)})) as c:
        yield c


async def test_typed_create_and_get(client):
    r = await client.post("/items", json={"name": "a", "size": 3})
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"id": "item-1", "name": "a", "size": 3}
    r = await client.get("/items/item-1")
    assert r.status_code == 200 and r.json()["name"] == "a"


async def test_lifespan_runs(tmp_path):
    app = example_app({"data_dir": str(tmp_path)})
    async with asgi_client(app) as c:
        assert (tmp_path / "started").exists()
        assert (await c.get("/health")).status_code == 200
    assert (tmp_path / "stopped").exists()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"not json", "not valid JSON"),
        (b"", "empty"),
        (b'{"name": "a"}', "size"),
        (b'{"name": "a", "size": "3"}', "Expected `int`"),
        (b'{"name": 1, "size": 3}', "Expected `str`"),
        (b'{"name": "a", "size": 3, "extra": 1}', "extra"),
        (b"[1, 2]", "Expected `object`"),
    ],
)
async def test_bad_bodies_are_400_in_envelope(client, body, fragment):
    r = await client.post("/items", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["success"] is False and data["code"] in ("BAD_REQUEST", "VALIDATION_ERROR")
    assert fragment in data["error"]


async def test_domain_error_keeps_code(client):
    r = await client.post("/items", json={"name": "a", "size": -1})
    assert r.status_code == 400
    assert r.json() == {"success": False, "error": "size must not be negative", "code": "INVALID_SIZE"}


async def test_not_found_and_method_not_allowed_use_envelope(client):
    r = await client.get("/items/nope")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = await client.get("/no/such/route")
    assert r.status_code == 404
    assert r.json() == {"success": False, "error": "no route for /no/such/route", "code": "NOT_FOUND"}
    r = await client.delete("/items")
    assert r.status_code == 405
    assert r.json()["code"] == "METHOD_NOT_ALLOWED"


async def test_body_limit_is_413(client):
    big = b'{"name": "' + b"x" * 400 + b'", "size": 1}'
    r = await client.post("/items", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == "PAYLOAD_TOO_LARGE"


async def test_body_limit_without_content_length(client):
    async def gen():
        for _ in range(10):
            yield b"x" * 100

    r = await client.post("/items", content=gen())
    assert r.status_code == 413


async def test_query_is_validated_and_coerced(client):
    for i in range(5):
        await client.post("/items", json={"name": f"n{i}", "size": i})
    r = await client.get("/items", params={"limit": "2", "offset": "1"})
    assert [i["name"] for i in r.json()] == ["n1", "n2"]
    r = await client.get("/items", params={"limit": "many"})
    assert r.status_code == 400 and "limit" in r.json()["error"]


async def test_unhandled_error_is_500_without_leaking(client):
    r = await client.get("/boom")
    assert r.status_code == 500
    assert "secret" not in r.text
    assert r.json()["code"] == "INTERNAL_ERROR"


async def test_timeout_is_504(client):
    r = await client.get("/slow")
    assert r.status_code == 504 and r.json()["code"] == "TIMEOUT"


async def test_plain_string_response(client):
    r = await client.get("/greeting")
    assert r.json() == "hello"


async def test_raw_fast_path(client):
    r = await client.put("/blob/b1", content=b"abc")
    assert r.status_code == 201
    assert r.content == b"cba" and r.headers["x-blob-id"] == "b1"
    r = await client.put("/blob/b1", content=b"x" * 2000)
    assert r.status_code == 413
    assert r.json()["success"] is False  # the service's envelope, from the raw path too


async def test_openapi_describes_every_route(client):
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert set(paths) >= {"/items", "/items/{item_id}", "/blob/{blob_id}", "/health", "/greeting"}
    create = paths["/items"]["post"]
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    item = doc["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert set(item["required"]) == {"name", "size"}
    params = {p["name"]: p for p in paths["/items"]["get"]["parameters"]}
    assert params["limit"]["schema"]["type"] == "integer" and not params["limit"]["required"]
    assert paths["/items/{item_id}"]["get"]["parameters"][0]["in"] == "path"
    assert doc["components"]["schemas"]["Error"]["required"] == ["success", "error", "code"]


async def test_metrics_count_requests_by_route(client):
    await client.get("/items/item-9")
    await client.get("/items/item-9")
    await client.put("/blob/zz", content=b"q")
    text = (await client.get("/metrics")).text
    assert (
        'shoal_http_requests_total{method="GET",route="/items/{item_id}",service="Example",status="404"} 2.0'
        in text
    )
    assert 'route="/blob/{blob_id}",service="Example",status="201"} 1.0' in text
    assert "shoal_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize(
    "envelope, expected",
    [
        (STATE_ENVELOPE, {"success": False, "error": "gone", "code": "NOT_FOUND"}),
        (DETAIL_ENVELOPE, {"detail": "gone"}),
        (COMPUTE_ENVELOPE, {"error": {"code": "NOT_FOUND", "message": "gone", "details": {}}}),
    ],
)
async def test_each_envelope(envelope, expected):
    api = Api()

    @api.get("/x")
    async def x(request):
        raise ApiError(404, "gone")

    async with asgi_client(create_app(title="t", apis=[api], envelope=envelope)) as c:
        r = await c.get("/x")
        assert r.status_code == 404 and r.json() == expected
        r = await c.get("/missing")
        assert r.status_code == 404 and set(r.json()) == set(expected)


async def test_declared_health_replaces_default():
    api = Api()

    @api.get("/health")
    async def health(request):
        return "healthy"

    app = create_app(title="t", apis=[api])
    async with asgi_client(app) as c:
        assert (await c.get("/health")).json() == "healthy"
    assert list(app.openapi["paths"]["/health"]) == ["get"]
