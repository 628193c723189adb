"""Per-instance metrics on /metrics (issue #22): CPU seconds, memory bytes and state per
instance (labels id, name, backend), open like the rest of /metrics, sampled once per
--metrics-ttl for all scrapes, and never held by a hung dockerd.
"""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import IMAGE, Api, needs_docker, start_service, wait_for

BUSY = ["sh", "-c", "while :; do :; done"]
PROMPT = 5.0  # how long /metrics may take while docker is hung (backend timeout 2 s)


def scrape(http: httpx.Client) -> dict[str, list]:
    r = http.get("/metrics")
    assert r.status_code == 200, r.text  # open: no token
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list], name: str, instance_id: str) -> float | None:
    rows = [s.value for s in samples.get(name, []) if s.labels.get("id") == instance_id]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def states(samples: dict[str, list]) -> dict[str, tuple[str, str, str]]:
    return {
        s.labels["id"]: (s.labels["name"], s.labels["backend"], s.labels["state"])
        for s in samples.get("shoal_compute_instance_state", [])
        if s.value == 1
    }


@needs_docker
def test_instance_metrics_per_instance_and_cached(tmp_path, dockerd, templates) -> None:
    svc = start_service(tmp_path / "data", dockerd.url, "test:///default", templates, ["--metrics-ttl", "1"])
    api = Api(svc.url)
    anon = httpx.Client(base_url=svc.url, timeout=30)
    try:
        busy = api.create(
            name="busy-box",
            backend="docker",
            config={"image": IMAGE, "command": BUSY},
            resources={"cpu": {"cores": 0.5}},
        )
        idle = api.create(name="idle-box", backend="docker", config={"image": IMAGE}, start=False)
        vm = api.create(name="metric-vm", backend="kvm", config={"image": "tiny"})

        first = wait_for(
            lambda: (m := scrape(anon)) and busy["id"] in states(m) and vm["id"] in states(m) and m,
            20,
            "a sample with the new instances",
        )
        assert states(first)[busy["id"]] == ("busy-box", "docker", "running")
        assert states(first)[idle["id"]] == ("idle-box", "docker", "stopped")
        assert states(first)[vm["id"]] == ("metric-vm", "kvm", "running")
        assert value(first, "shoal_compute_instance_memory_bytes", busy["id"]) > 0
        assert value(first, "shoal_compute_instance_memory_bytes", vm["id"]) > 0
        assert value(first, "shoal_compute_instance_cpu_seconds_total", idle["id"]) is None  # not running
        up = {s.labels["backend"]: s.value for s in first["shoal_compute_instance_metrics_backend_up"]}
        assert up == {"docker": 1, "kvm": 1}

        # the busy loop's CPU seconds grow from one sample to the next
        cpu0 = value(first, "shoal_compute_instance_cpu_seconds_total", busy["id"])
        assert cpu0 is not None and cpu0 >= 0
        wait_for(
            lambda: value(scrape(anon), "shoal_compute_instance_cpu_seconds_total", busy["id"]) > cpu0 + 0.2,
            30,
            "CPU seconds to grow",
        )
        assert value(scrape(anon), "shoal_compute_instance_cpu_seconds_total", vm["id"]) is not None

        # a state change shows in a later sample
        api.put(f"/instances/{busy['id']}/stop", json={"force": True})
        wait_for(
            lambda: states(scrape(anon))[busy["id"]][2] == "stopped", 20, "the stopped state in /metrics"
        )

        # a deleted instance leaves /metrics
        assert api.delete(f"/instances/{idle['id']}").status_code == 204
        wait_for(lambda: idle["id"] not in states(scrape(anon)), 20, "the deleted instance to go")
    finally:
        anon.close()
        api.close()
        svc.stop()


@needs_docker
def test_scrapes_share_one_sample(tmp_path, dockerd, templates) -> None:
    """With the default 5 s cache, a burst of scrapes asks the daemons at most twice."""
    svc = start_service(tmp_path / "data", dockerd.url, "test:///default", templates)
    api = Api(svc.url)
    anon = httpx.Client(base_url=svc.url, timeout=30)
    try:
        api.create(name="cached-box", backend="docker", config={"image": IMAGE, "command": ["sleep", "3600"]})
        before = scrape(anon)["shoal_compute_instance_metrics_samples_total"][0].value
        start = time.monotonic()
        seen = [scrape(anon)["shoal_compute_instance_metrics_samples_total"][0].value for _ in range(10)]
        if time.monotonic() - start < 5.0:  # the burst fit in one cache period (it always does here)
            assert max(seen) - before <= 1, (before, seen)
        assert seen == sorted(seen)
    finally:
        anon.close()
        api.close()
        svc.stop()


@needs_docker
def test_hung_dockerd_never_blocks_metrics(tmp_path, dockerd, templates) -> None:
    svc = start_service(
        tmp_path / "data", dockerd.url, "test:///default", templates, ["--metrics-ttl", "0.5"]
    )
    api = Api(svc.url)
    anon = httpx.Client(base_url=svc.url, timeout=PROMPT)  # a scrape longer than PROMPT fails the test
    try:
        box = api.create(
            name="hung-metrics", backend="docker", config={"image": IMAGE, "command": ["sleep", "3600"]}
        )
        vm = api.create(name="hung-metrics-vm", backend="kvm", config={"image": "tiny"})
        wait_for(lambda: box["id"] in states(scrape(anon)), 20, "the container in /metrics")
        dockerd.pause_daemon()
        try:

            def degraded() -> dict | None:
                m = scrape(anon)
                up = {s.labels["backend"]: s.value for s in m["shoal_compute_instance_metrics_backend_up"]}
                return m if up.get("docker") == 0 else None

            m = wait_for(degraded, 15, "docker to show as not reached")
            assert states(m)[box["id"]] == ("hung-metrics", "docker", "unknown")
            assert states(m)[vm["id"]] == ("hung-metrics-vm", "kvm", "running")
            assert value(m, "shoal_compute_instance_memory_bytes", vm["id"]) > 0
            for _ in range(3):  # every scrape answers (PROMPT bounds each) while dockerd stays hung
                assert states(scrape(anon))[vm["id"]][2] == "running"
                time.sleep(0.6)
        finally:
            dockerd.resume_daemon()
        wait_for(lambda: states(scrape(anon))[box["id"]][2] == "running", 30, "docker back in /metrics")
    finally:
        anon.close()
        api.close()
        svc.stop()
