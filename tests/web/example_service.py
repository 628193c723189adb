"""A small service built on shoal.web, used by the web layer's tests (plugged in with
SHOAL_SERVICE_MODULES so `shoal serve example` runs it under granian)."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import msgspec

from shoal.web import (
    STATE_ENVELOPE,
    Api,
    ApiError,
    read_raw_body,
    respond,
)
from shoal.web import (
    create_app as build,
)

TITLE = "Example"


class Item(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    size: int
    tags: list[str] = []


class ItemOut(msgspec.Struct):
    id: str
    name: str
    size: int


class Page(msgspec.Struct):
    limit: int = 10
    offset: int = 0


def add_arguments(parser) -> None:
    parser.add_argument("--greeting", default="hello")


def make_api(data_dir: Path | None = None, greeting: str = "hello") -> Api:
    api = Api(tags=["items"])
    items: dict[str, ItemOut] = {}

    @api.post("/items", body=Item, response=ItemOut, status=201, summary="Create an item")
    async def create(request, body: Item) -> ItemOut:
        if body.size < 0:
            raise ApiError(400, "size must not be negative", code="INVALID_SIZE")
        item = ItemOut(id=f"item-{len(items) + 1}", name=body.name, size=body.size)
        items[item.id] = item
        return item

    @api.get("/items/{item_id}", response=ItemOut)
    async def get(request, item_id: str) -> ItemOut:
        if item_id not in items:
            raise ApiError(404, f"item {item_id} not found")
        return items[item_id]

    @api.get("/items", query=Page, response=list[ItemOut])
    async def list_items(request, query: Page) -> list[ItemOut]:
        return list(items.values())[query.offset : query.offset + query.limit]

    @api.get("/greeting")
    async def greet(request) -> str:
        return greeting

    @api.get("/boom")
    async def boom(request) -> dict:
        raise RuntimeError("secret internal detail")

    @api.get("/slow", timeout=0.2)
    async def slow(request) -> dict:
        await asyncio.sleep(5)
        return {}

    @api.post("/sleep/{ms}")
    async def sleep(request, ms: str) -> dict:
        """Sleeps, then writes a marker file: proves in-flight requests finish on SIGTERM."""
        await asyncio.sleep(int(ms) / 1000)
        if data_dir is not None:
            (data_dir / f"done-{ms}").write_text("ok")
        return {"slept_ms": int(ms)}

    @api.raw("PUT", "/blob/{blob_id}", summary="Store a blob (raw fast path)", max_body=1024)
    async def put_blob(scope, receive, send, blob_id: str) -> None:
        body = await read_raw_body(scope, receive, 1024)
        await respond(send, 201, body[::-1], [(b"x-blob-id", quote(blob_id).encode())])

    return api


def create_app(options: dict):
    data_dir = Path(options["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app):
        (data_dir / "started").write_text(f"{os.getpid()} {os.getppid()}")
        yield
        (data_dir / "stopped").write_text(str(os.getpid()))

    return build(
        title=TITLE,
        apis=[make_api(data_dir, options.get("greeting", "hello"))],
        envelope=STATE_ENVELOPE,
        max_body=256,
        lifespan=lifespan,
    )
