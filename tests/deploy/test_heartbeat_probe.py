"""deploy/heartbeat_probe.py, the workers' health check in the images, compose and Kubernetes: healthy while
a worker of this host beats, unhealthy when Redis answers without a fresh beat of ours, and healthy while
Redis cannot be reached (restarting a worker would not bring Redis back)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import redis

from shared.workers import beat
from tests.deploy.conftest import DEPLOY, REDIS_PORT, ROOT


def probe(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, str(DEPLOY / "heartbeat_probe.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_the_probe_follows_this_hosts_heartbeat(deploy_redis: str) -> None:
    url = deploy_redis.rsplit("/", 1)[0] + "/3"  # a database of this test's own
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        result = probe(url, "--kind", "serve")
        assert result.returncode == 1 and "no serve worker on" in result.stdout
        beat(client, "serve-elsewhere", {"kind": "serve", "host": "another-host"})
        assert probe(url, "--kind", "serve").returncode == 1  # another host's beat is not ours

        beat(client, "serve-here", {"kind": "serve", "host": os.uname().nodename})
        result = probe(url, "--kind", "serve")
        assert result.returncode == 0 and "serve-here" in result.stdout
        assert probe(url, "--kind", "train").returncode == 1  # a serving worker's beat says nothing of training
        assert probe(url).returncode == 0  # any kind

        stale = {"kind": "train", "host": os.uname().nodename}
        client.set("canvas:worker:train-old", json.dumps({**stale, "name": "train-old", "beat_at": time.time() - 60}))
        assert probe(url, "--kind", "train").returncode == 1  # a beat older than --max-age does not count
        assert probe(url, "--kind", "train", "--max-age", "120").returncode == 0
    finally:
        client.flushdb()
        client.close()


def test_a_redis_outage_is_not_the_workers_fault_but_a_wrong_password_is(deploy_redis: str) -> None:
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    down = probe(f"redis://127.0.0.1:{port}/0")
    assert down.returncode == 0 and "cannot be reached" in down.stdout
    refused = probe(f"redis://:wrong@127.0.0.1:{REDIS_PORT}/0")
    assert refused.returncode == 1 and "refuses" in refused.stdout
