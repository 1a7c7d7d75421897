"""A worker container's health check: healthy while a worker of this host beats its heartbeat into Redis
(shared/workers.py: every 10 s, kept 30 s), and while Redis cannot be reached at all, since restarting a
worker during a Redis outage would not bring Redis back and would only reload its model.

Exit 0: healthy. Exit 1: Redis answers (or refuses our password) and holds no fresh heartbeat from this
host of the given kind. The images' HEALTHCHECK, compose's health checks and the Kubernetes startup and
liveness probes of the workers run it; a worker beats only once its models are loaded, so give it a
start period. Imports no torch: it answers in well under a second.

    python deploy/heartbeat_probe.py [--kind serve|train|webhooks] [--max-age SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import redis

from shared.settings import Settings
from shared.workers import live_workers


def fresh_beats(client: redis.Redis, host: str, kind: str | None, max_age: float) -> list[dict]:
    """The heartbeats of this host's workers (of `kind`, if given) younger than `max_age` seconds."""
    now = time.time()
    return [
        beat
        for beat in live_workers(client)
        if beat.get("host") == host and kind in (None, beat.get("kind")) and now - beat.get("beat_at", 0) <= max_age
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heartbeat_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["serve", "train", "webhooks"], help="only workers of this kind")
    parser.add_argument("--max-age", type=float, default=30.0, help="seconds a heartbeat counts (default 30)")
    args = parser.parse_args(argv)
    host = os.uname().nodename
    client = redis.Redis.from_url(Settings.from_env().redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        beats = fresh_beats(client, host, args.kind, args.max_age)
    except redis.AuthenticationError as exc:
        print(f"unhealthy: Redis refuses this worker's credentials ({exc})")
        return 1
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"healthy as far as we know: Redis cannot be reached ({exc}), which no restart of ours fixes")
        return 0
    finally:
        client.close()
    what = f"{args.kind} worker" if args.kind else "worker"
    if not beats:
        print(f"unhealthy: no {what} on {host} has beaten in the last {args.max_age:g}s")
        return 1
    names = ", ".join(sorted(str(b.get("name", "?")) for b in beats))
    print(f"healthy: {len(beats)} {what}(s) on {host} beating: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
