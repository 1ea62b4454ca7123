"""docs/deploy.md and deploy/: the compose file starts what the CLI accepts, and the capacity
plan in the docs is the one the measured results give."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

from bench import plan
from realtime_ser.cli import _build_parser
from realtime_ser.config import apply_overrides, check_bus_url, load


def test_the_plan_in_the_docs_is_computed_from_the_results() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = doc.split(plan.BEGIN, 1)[1].split(plan.END, 1)[0].strip()
    assert block == plan.table(plan.compute(plan.RESULTS)), "run python -m bench.plan"


def test_plan_rules(tmp_path: Path) -> None:
    machine = {"cpu_affinity": 4}
    probe = {"server_rss_mb_idle": 500.0}
    cap = {"machine": machine, "max_sessions": 48, "backends": {
        "pocketsphinx": {"pipeline": {"capacity": 10, "probes": [probe], "rss_mb_per_added_session": 100.0}}}}
    (tmp_path / "capacity.json").write_text(json.dumps(cap))
    p = plan.compute(tmp_path)
    (row,) = p["rows"]
    assert row["per_node"] == 7  # 10 x 0.95 (the bus's target, not yet measured) x 0.8, down
    assert (row["nodes_100"], row["spare_100"], row["cores_100"]) == (17, 2, 68)  # 15 + 2 spares, 4 cores each
    assert (row["nodes_1000"], row["spare_1000"]) == (143 + 15, 15)
    bus = {"short": False, "comparison": {"sessions_ratio": 1.2, "redis": {"events_per_session_second": 2.0}},
           "throughput": {"redis_cpu_ms_per_1000_events": 50.0, "redis_bytes_per_event": 1000}}
    (tmp_path / "bus.json").write_text(json.dumps(bus))
    p = plan.compute(tmp_path)
    assert p["rows"][0]["per_node"] == 8  # a ratio above 1 counts as 1
    assert p["redis"]["1000"] == {"events_per_second": 2000, "cpu_cores": 0.1,
                                  "memory_mb": round(3000 * 300 * 2.0 * 1000 / 2**20)}
    # a recognizer that held one call gets no plan rather than one call per node; a baseline is no plan at all
    cap["backends"]["none"] = {"pipeline": {"capacity": 1, "probes": [probe]}}
    cap["backends"]["whisper (baseline abc)"] = {"pipeline": {"capacity": 3, "probes": [probe]}}
    (tmp_path / "capacity.json").write_text(json.dumps(cap))
    p = plan.compute(tmp_path)
    assert [r["recognizer"] for r in p["rows"]] == ["pocketsphinx", "none"]
    assert p["rows"][1]["per_node"] == 0 and p["rows"][1]["nodes_100"] is None
    assert "| none | 1 | 0 ² | – | – | – |" in plan.table(p)


def test_compose_nodes_run_what_the_cli_accepts() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    node = services["node"]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    assert entry[:2] == ["realtime-ser", "serve"] and "pip install --no-cache-dir '.[redis]'" in dockerfile
    args = _build_parser().parse_args([*entry[1:], *node["command"]])
    config = apply_overrides(load(None), list(args.set))
    assert config.server.max_sessions >= 1
    env = node["environment"]
    bus = env["REALTIME_SER_BUS"].replace("${REDIS_PASSWORD}", "secret")
    check_bus_url(bus)
    assert bus.startswith("redis://:secret@redis:6379/")
    assert "REALTIME_SER_TOKEN" in env
    nginx = (REPO / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    for needed in ("proxy_set_header Upgrade $http_upgrade", "proxy_http_version 1.1", "least_conn",
                   "server node:8765"):
        assert needed in nginx
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for command in re.findall(r"^realtime-ser (serve [^\n#]*)", doc, re.M):
        _build_parser().parse_args(shlex.split(command))


def test_one_node_never_imports_redis() -> None:
    """`make demo` and a single `serve` need no Redis, not even its client library."""
    import subprocess
    import sys

    code = ("import sys, asyncio\n"
            "from realtime_ser.config import PipelineConfig, apply_overrides\n"
            "from realtime_ser.server import Server\n"
            "async def main():\n"
            "    s = Server(apply_overrides(PipelineConfig(), ['server.port=0']), {'none': None})\n"
            "    await s.start(); await s.shutdown()\n"
            "asyncio.run(main())\n"
            "assert 'redis' not in sys.modules, 'redis was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_redis_bus_without_redis_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from realtime_ser.errors import RealtimeSerError
    from realtime_ser.server.bus import create_bus
    from realtime_ser.server.metrics import Registry

    monkeypatch.setitem(sys.modules, "realtime_ser.server.redis_bus", None)  # as if redis-py were missing
    cfg = apply_overrides(load(None), ["server.bus=redis://:pw@localhost:6379/0"])
    with pytest.raises(RealtimeSerError, match=r"pip install 'realtime-ser\[redis\]'") as err:
        create_bus(cfg.server, Registry())
    assert "pw" not in str(err.value)
