"""Configuration validation, redaction and atomic persistence (pure functions, no server)."""

from __future__ import annotations

import json

import pytest

from shoal.manager.config import ConfigError, load_config, parse_config, redacted, save_config

STORAGE = {
    "bucket": "my-bucket",
    "endpoint": "http://127.0.0.1:9000",
    "access_key": "AKIAEXAMPLE",
    "secret_key": "s3cr3t",
    "region": "us-east-1",
    "key_prefix": "node1",
}


def test_valid_config_parses_with_defaults():
    cfg = parse_config({"storage": STORAGE, "stacks": ["db", "juicefs", "leaser"]})
    assert cfg.stacks == ["db", "juicefs", "leaser"]
    assert cfg.lease.ttl_seconds == 15.0
    assert cfg.juicefs.mount_path is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"invalid": True}, ""),
        ({"stacks": ["db"]}, ""),
        ({"storage": {**STORAGE, "endpoint": "not a url"}, "stacks": ["db"]}, "storage.endpoint"),
        ({"storage": {**STORAGE, "endpoint": "ftp://x"}, "stacks": ["db"]}, "storage.endpoint"),
        ({"storage": {**STORAGE, "endpoint": "http://h:99999"}, "stacks": ["db"]}, "storage.endpoint"),
        ({"storage": {**STORAGE, "bucket": "A_B"}, "stacks": ["db"]}, "storage.bucket"),
        ({"storage": {**STORAGE, "access_key": ""}, "stacks": ["db"]}, "storage.access_key"),
        ({"storage": {**STORAGE, "key_prefix": "../x"}, "stacks": ["db"]}, "storage.key_prefix"),
        ({"storage": STORAGE, "stacks": ["db", "db"]}, "stacks[1]"),
        ({"storage": STORAGE, "stacks": ["redis"]}, "stacks[0]"),
        ({"storage": STORAGE, "stacks": []}, "stacks"),
        ({"storage": STORAGE, "stacks": "db"}, "stacks"),
        ({"storage": {**STORAGE, "bucket": 5}, "stacks": ["db"]}, "storage.bucket"),
        ({"storage": STORAGE, "stacks": ["db"], "lease": {"ttl_seconds": 0.1}}, "lease.ttl_seconds"),
        (
            {"storage": STORAGE, "stacks": ["db"], "juicefs": {"mount_options": ["-d"]}},
            "juicefs.mount_options[0]",
        ),
        (["not", "an", "object"], ""),
    ],
)
def test_invalid_configs_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.problems
    assert any(p["field"] == field for p in err.value.problems), err.value.problems


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": {**STORAGE, "bucket": "X", "endpoint": "nope"}, "stacks": ["db", "db"]})
    fields = {p["field"] for p in err.value.problems}
    assert {"storage.bucket", "storage.endpoint", "stacks[1]"} <= fields


def test_redaction_hides_secrets():
    view = redacted(parse_config({"storage": STORAGE, "stacks": ["db"]}))
    assert view["storage"]["secret_key"] == "***"
    assert "s3cr3t" not in json.dumps(view)
    assert "AKIAEXAMPLE" not in json.dumps(view)


def test_save_is_atomic_and_private(tmp_path):
    path = tmp_path / "tmp" / "config.json"
    cfg = parse_config({"storage": STORAGE, "stacks": ["db"]})
    save_config(path, cfg)
    assert load_config(path) == cfg
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left


def test_load_missing_and_invalid(tmp_path):
    assert load_config(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        load_config(bad)
    bad.write_text(json.dumps({"storage": STORAGE, "stacks": ["nope"]}))
    with pytest.raises(ConfigError):
        load_config(bad)
