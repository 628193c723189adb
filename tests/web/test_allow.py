"""405 answers list every method of the path (typed and raw routes alike); TRACE is 405 on a
path that exists; an over-long request target is 414 in the service's own envelope."""

from __future__ import annotations

import pytest

from shoal.testing import asgi_client
from shoal.web import COMPUTE_ENVELOPE, Api, create_app
from shoal.web.app import MAX_TARGET
from shoal.web.fastpath import respond


def build():
    api = Api()

    @api.get("/things/{name}")
    async def get_thing(request, name: str) -> dict:
        return {"name": name}

    @api.put("/things/{name}")
    async def put_thing(request, name: str) -> dict:
        return {"name": name}

    @api.raw("GET", "/blobs/{key:path}")
    async def get_blob(scope, receive, send, key: str) -> None:
        await respond(send, 200, key.encode())

    @api.delete("/blobs/{key:path}")
    async def delete_blob(request, key: str) -> dict:
        return {}

    return create_app(title="allow", apis=[api], envelope=COMPUTE_ENVELOPE)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/things/a", "GET, HEAD, PUT"),
        ("TRACE", "/things/a", "GET, HEAD, PUT"),
        ("POST", "/blobs/a/b/c", "DELETE, GET"),  # raw GET (no HEAD of its own) + typed DELETE
        ("HEAD", "/blobs/a", "DELETE, GET"),
        ("PATCH", "/health", "GET, HEAD"),
        ("POST", "/openapi.json", "GET, HEAD"),
    ],
)
async def test_405_lists_every_method_of_the_path(method: str, path: str, allow: str) -> None:
    async with asgi_client(build()) as c:
        r = await c.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    if method != "HEAD":  # a HEAD answer has no body
        assert r.json()["error"]["message"].startswith(f"method {method} not allowed")


async def test_unknown_path_is_still_404() -> None:
    async with asgi_client(build()) as c:
        r = await c.request("TRACE", "/nothing/here")
    assert r.status_code == 404 and "allow" not in r.headers
    assert "error" in r.json()


async def test_over_long_target_is_414_in_the_envelope() -> None:
    async with asgi_client(build()) as c:
        r = await c.get("/things/" + "x" * MAX_TARGET)
        ok = await c.get("/things/" + "x" * 100)
    assert r.status_code == 414 and r.json()["error"]["code"]
    assert ok.status_code == 200


async def test_a_query_parameter_given_twice_is_400() -> None:
    import msgspec

    from shoal.web import Api, create_app

    class Q(msgspec.Struct):
        cursor: str | None = None

    api = Api()

    @api.get("/list", query=Q)
    async def listing(request, query: Q) -> dict:
        return {"cursor": query.cursor}

    async with asgi_client(create_app(title="q", apis=[api], envelope=COMPUTE_ENVELOPE)) as c:
        assert (await c.get("/list?cursor=a")).json() == {"cursor": "a"}
        r = await c.get("/list?cursor=a&cursor=b")
    assert r.status_code == 400 and "cursor" in r.json()["error"]["message"]
