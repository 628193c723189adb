"""The kv OpenAPI says what the service checks (#24): keys with a leading '/', base64 values,
a transaction's set needs a value and its check a version."""

from __future__ import annotations

import re

from shoal.kv.service import create_app
from shoal.testing import asgi_client


async def test_kv_schema_states_the_key_and_value_rules(tmp_path):
    async with asgi_client(create_app({"store": "memory", "data_dir": str(tmp_path)})) as c:
        doc = (await c.get("/openapi.json")).json()
        schemas = doc["components"]["schemas"]
        ops = {v["properties"]["op"]["enum"][0]: v for v in schemas["TxnOpIn"]["oneOf"]}
        assert "value" in ops["set"]["required"] and "version" in ops["check"]["required"]
        key = ops["delete"]["properties"]["key"]["pattern"]
        assert re.search(key, "/a/b") and not re.search(key, "a/b") and not re.search(key, "/a\0")
        r = await c.post("/v1/txn", json={"ops": [{"op": "set", "key": "/a"}]})
        assert r.status_code == 400 and "needs a value" in r.json()["detail"]
        r = await c.post("/v1/txn", json={"ops": [{"op": "check", "key": "/a"}]})
        assert r.status_code == 400 and "needs a version" in r.json()["detail"]
        base64 = next(
            v for v in schemas["PutBody"]["oneOf"] if v["properties"]["encoding"]["enum"] == ["base64"]
        )
        assert not re.search(base64["properties"]["value"]["pattern"], "not base64!")
        r = await c.put("/v1/kv/x", json={"value": "not base64!", "encoding": "base64"})
        assert r.status_code == 400
        path = doc["paths"]["/v1/kv/{key}"]["get"]["parameters"][0]["schema"]["pattern"]
        assert not re.search(path, "a\nb")
        r = await c.put("/v1/kv/x", json={"value": "1", "expected_version": 0.0})  # 0.0 is 0
        assert r.status_code == 200 and r.json()["version"] == 1
