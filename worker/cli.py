"""The `canvas` command: database, keys, models, workers, the API, and the embedded stack.

Heavy imports (torch) happen inside the commands that need them, so `canvas keys ...` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from shared import sealing
from shared.db import session_scope
from shared.settings import Settings


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from shared.migrate import upgrade

    upgrade(settings.database_url)
    print(f"database at {settings.database_url} is at the latest schema")
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from shared.keys import create_key

    with session_scope(settings.database_url) as session:
        record, plain = create_key(session, args.name, tenant_id=args.tenant, admin=args.admin)
    print(f"created key {record.id} (tenant {record.tenant_id}{', admin' if args.admin else ''}).")
    print("The key is shown only this once; store it now:")
    print(plain)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from shared.models import ApiKey

    with session_scope(settings.database_url) as session:
        for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
            state = "revoked" if k.revoked_at else "active"
            print(f"{k.id}  {k.prefix}…  tenant={k.tenant_id}  admin={k.is_admin}  {state}  {k.name}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from shared.keys import revoke_key

    with session_scope(settings.database_url) as session:
        ok = revoke_key(session, args.key_id)
    print(f"revoked {args.key_id}" if ok else f"no active key {args.key_id}")
    return 0 if ok else 1


def cmd_webhooks_seal(args: argparse.Namespace, settings: Settings) -> int:
    from shared.webhooks import reseal_secrets

    with session_scope(settings.database_url) as session:
        count = reseal_secrets(session)
    how = "sealed by CANVAS_WEBHOOK_SEALING_KEYS' first key" if settings.webhook_sealing_keys else "stored plain"
    print(f"{count} webhook secrets rewritten: {how}")
    return 0


def cmd_models_add(args: argparse.Namespace, settings: Settings) -> int:
    from shared.errors import CanvasError
    from shared.registry import register_model

    try:
        with session_scope(settings.database_url) as session:
            record = register_model(session, args.name, Path(args.path))
    except CanvasError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"model {record.name}: {record.path} (canvas {record.canvas_length}, {record.max_positions} positions)")
    return 0


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared.registry import list_models

    with session_scope(settings.database_url) as session:
        for m in list_models(session):
            print(f"{m.name}\t{m.path}\tcanvas={m.canvas_length}\tpositions={m.max_positions}")
    return 0


def cmd_models_make_tiny(args: argparse.Namespace, settings: Settings) -> int:
    from worker.tiny import make_tiny

    path = make_tiny(Path(args.directory), seed=args.seed, canvas_length=args.canvas_length)
    print(f"wrote a tiny random DiffusionGemma to {path}")
    return 0


def cmd_worker_serve(args: argparse.Namespace, settings: Settings) -> int:
    from worker.serve import serve

    return serve([m for m in args.models.split(",") if m], args.gpus, args.loglevel)


def cmd_worker_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from worker.serve import serve_webhooks

    return serve_webhooks(args.concurrency, args.loglevel)


def cmd_worker_train(args: argparse.Namespace, settings: Settings) -> int:
    from worker.serve import serve_train

    return serve_train(args.gpus, args.loglevel)


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.serve import main as serve_api

    serve_api(["--host", args.host, "--port", str(args.port)])
    return 0


def cmd_sweeper(args: argparse.Namespace, settings: Settings) -> int:
    from shared.queue import make_celery
    from shared.sweeper import Sweeper

    sweeper = Sweeper(settings, make_celery(settings, "canvas-sweeper"))
    sweeper.run()
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from worker.stack import embedded_stack

    with embedded_stack(port=args.port) as stack:
        print(f"\nCanvas is up at {stack.url}  (model {stack.model})")
        print(f"admin key (shown once): {stack.admin_key}")
        print(f"try: curl -H 'Authorization: Bearer {stack.admin_key}' {stack.url}/v1/models")
        print(f"dashboard: {stack.url}/admin (log in with the admin key)")
        print(f"logs: {stack.log_dir}/api.log, {stack.log_dir}/worker.log")
        print("Ctrl-C stops everything.\n", flush=True)
        try:
            while all(p.poll() is None for p in stack.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping…")
        failed = [p.args for p in stack.processes if p.poll() not in (None, 0)]
    return 1 if failed else 0


def cmd_train_demo(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import fields

    from worker.training.demo_model.train import Recipe, train_demo

    given = {f.name: getattr(args, f.name, None) for f in fields(Recipe)}
    recipe = Recipe(**{name: value for name, value in given.items() if value is not None})
    figures = train_demo(Path(args.out), recipe)
    print(f"wrote {args.out}: {figures}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.demo import run_demo
    from worker.stack import embedded_stack, print_log_tails

    try:
        with embedded_stack() as stack:
            print(f"Canvas is up at {stack.url}; running the demo jobs on {stack.model}", flush=True)
            print(f"(logs in {stack.log_dir})\n", flush=True)
            code = run_demo(stack.url, stack.admin_key, stack.model)
            if code:
                print_log_tails(stack.log_dir)
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("demo finished: all processes stopped" if code == 0 else "demo FAILED", flush=True)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canvas", description="Canvas: a job service for diffusion LMs")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="run the Alembic migrations").set_defaults(fn=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true")
    create.add_argument("--tenant", help="tenant id to join (default: a new tenant)")
    create.set_defaults(fn=cmd_keys_create)
    keys.add_parser("list").set_defaults(fn=cmd_keys_list)
    revoke = keys.add_parser("revoke")
    revoke.add_argument("key_id")
    revoke.set_defaults(fn=cmd_keys_revoke)

    hooks_cmd = sub.add_parser("webhooks", help="webhook secrets").add_subparsers(dest="action", required=True)
    seal = hooks_cmd.add_parser("seal", help="rewrite every webhook secret under CANVAS_WEBHOOK_SEALING_KEYS")
    seal.set_defaults(fn=cmd_webhooks_seal)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    add = models.add_parser("add", help="register a local Hugging Face directory")
    add.add_argument("name")
    add.add_argument("path")
    add.set_defaults(fn=cmd_models_add)
    models.add_parser("list").set_defaults(fn=cmd_models_list)
    tiny = models.add_parser("make-tiny", help="write a tiny random DiffusionGemma")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--canvas-length", type=int, default=32)
    tiny.set_defaults(fn=cmd_models_make_tiny)

    worker = sub.add_parser("worker", help="workers").add_subparsers(dest="action", required=True)
    serve = worker.add_parser("serve", help="one generation worker per GPU")
    serve.add_argument("--gpus", default="auto", help="'auto', 'none' (one CPU process) or a list like 0,1")
    serve.add_argument("--models", required=True, help="comma-separated model names")
    serve.add_argument("--loglevel", default="INFO")
    serve.set_defaults(fn=cmd_worker_serve)
    train = worker.add_parser("train", help="fine-tuning workers, one job at a time per GPU")
    train.add_argument("--gpus", default="auto", help="'auto', 'none' (one CPU process) or a list like 0,1")
    train.add_argument("--loglevel", default="INFO")
    train.set_defaults(fn=cmd_worker_train)
    hooks = worker.add_parser("webhooks", help="the webhook delivery worker (CPU)")
    hooks.add_argument("--concurrency", type=int, default=8)
    hooks.add_argument("--loglevel", default="INFO")
    hooks.set_defaults(fn=cmd_worker_webhooks)

    api = sub.add_parser("api", help="serve the API (production: gunicorn 'api.wsgi:app')")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(fn=cmd_api)
    sub.add_parser("sweeper", help="publish the outbox and reap expired leases").set_defaults(fn=cmd_sweeper)
    up = sub.add_parser("up", help="run the embedded stack until Ctrl-C")
    up.add_argument("--port", type=int, default=8000)
    up.set_defaults(fn=cmd_up)
    sub.add_parser("demo", help="run the embedded stack, submit demo jobs, stop").set_defaults(fn=cmd_demo)
    training = sub.add_parser("train", help="train models of our own").add_subparsers(dest="action", required=True)
    demo = training.add_parser("demo", help="train the demo model from scratch (Sudoku and text tasks)")
    demo.add_argument("--out", default="models/canvas-demo")
    for name in ("hidden", "layers", "steps", "batch_size", "warmup_steps", "sudoku"):
        demo.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    for name in ("learning_rate", "sudoku_share", "minutes", "encoder_loss_weight"):
        demo.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float)
    demo.add_argument("--init-from", dest="init_from", help="continue from this model's weights")
    demo.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast on a GPU (default on)")
    demo.set_defaults(fn=cmd_train_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sealing.configure(settings.webhook_sealing_keys)
    return args.fn(args, settings)


if __name__ == "__main__":
    sys.exit(main())
