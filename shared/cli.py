"""The `canvas` command: its parser, and the commands that need only shared/ (database, keys, webhook
secrets, the model registry, the sweeper).

The api and worker packages add their own commands as plug-ins: entry points of the `canvas.commands`
group (pyproject.toml), each a `register(commands)`. A plug-in whose package this install lacks (the API
image has no worker/) is skipped; its commands then answer with what to install. Knows no plug-in by
import, only by entry-point name. Heavy imports happen inside the commands, so `canvas keys ...` is quick.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

from shared import sealing
from shared.db import session_scope
from shared.logs import configure_logging
from shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)
GROUP = "canvas.commands"
Command = Callable[[argparse.Namespace, Settings], int]
Register = Callable[["Commands"], None]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors also say which plug-ins this install lacks."""

    def __init__(self, *args: Any, missing: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.missing = missing

    def error(self, message: str) -> NoReturn:
        super().error(message + self.missing)


class Commands:
    """The subcommands of `canvas`: top-level ones (`canvas NAME`) and grouped ones (`canvas GROUP ACTION`).
    Plug-ins add theirs through it, to groups of their own or to shared ones such as `models`."""

    def __init__(self, parser: Parser) -> None:
        self._missing = parser.missing
        self._top = parser.add_subparsers(dest="command", required=True)
        self._groups: dict[str, argparse._SubParsersAction[Parser]] = {}

    def command(self, name: str, help: str, fn: Command) -> Parser:
        parser = self._add(self._top, name, help)
        parser.set_defaults(fn=fn)
        return parser

    def group(self, name: str, help: str) -> argparse._SubParsersAction[Parser]:
        """The actions of `canvas NAME`, made on first use."""
        if name not in self._groups:
            self._groups[name] = self._add(self._top, name, help).add_subparsers(dest="action", required=True)
        return self._groups[name]

    def action(self, group: str, name: str, help: str, fn: Command) -> Parser:
        parser = self._add(self._groups[group], name, help)
        parser.set_defaults(fn=fn)
        return parser

    def _add(self, to: argparse._SubParsersAction[Parser], name: str, help: str) -> Parser:
        parser = to.add_parser(name, help=help)
        parser.missing = self._missing  # so `canvas models make-tiny` without worker/ says what to install
        return parser


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


def cmd_sweeper(args: argparse.Namespace, settings: Settings) -> int:
    """Sweep until SIGTERM or SIGINT (docker stop, Kubernetes, Ctrl-C), then finish the sweep under way and
    exit 0. The signals are blocked in every thread and taken here with `sigtimedwait`, so no handler runs
    inside a sweep."""
    from shared.queue import make_celery
    from shared.sweeper import Sweeper

    stop_on = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_on)  # before the thread starts: it inherits the mask
    sweeper = Sweeper(settings, make_celery(settings, "canvas-sweeper", publish_only=True))
    sweeper.start()
    received = None
    while received is None and sweeper.is_alive():
        received = signal.sigtimedwait(stop_on, 1.0)
    if received is not None:
        log.info("%s: stopping after the sweep under way", signal.strsignal(received.si_signo))
    sweeper.stop()
    sweeper.join()
    return 0


def register(commands: Commands) -> None:
    """The commands of shared/: they run in every image."""
    commands.group("db", help="database schema")
    commands.action("db", "upgrade", help="run the Alembic migrations", fn=cmd_db_upgrade)

    commands.group("keys", help="API keys")
    create = commands.action("keys", "create", help="create a key and print it once", fn=cmd_keys_create)
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true")
    create.add_argument("--tenant", help="tenant id to join (default: a new tenant)")
    commands.action("keys", "list", help="list the keys (never the keys themselves)", fn=cmd_keys_list)
    commands.action("keys", "revoke", help="revoke a key", fn=cmd_keys_revoke).add_argument("key_id")

    commands.group("webhooks", help="webhook secrets")
    seal_help = "rewrite every webhook secret under CANVAS_WEBHOOK_SEALING_KEYS"
    commands.action("webhooks", "seal", help=seal_help, fn=cmd_webhooks_seal)

    commands.group("models", help="the model registry")
    add = commands.action("models", "add", help="register a local Hugging Face directory", fn=cmd_models_add)
    add.add_argument("name")
    add.add_argument("path")
    commands.action("models", "list", help="list the registered models", fn=cmd_models_list)

    commands.command("sweeper", help="publish the outbox and reap expired leases", fn=cmd_sweeper)


def load_plugins() -> tuple[dict[str, Register], dict[str, str]]:
    """The plug-ins' register functions by name, and why each one that did not import did not."""
    found: dict[str, Register] = {}
    missing: dict[str, str] = {}
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            found[entry.name] = entry.load()
        except ImportError as exc:
            missing[entry.name] = str(exc)
    return found, missing


def needs(name: str, reason: str) -> str:
    extra = "'canvas[worker]'" if name == "worker" else "canvas"
    return f"the {name} commands need the {name} package, which this install lacks ({reason}): pip install {extra}"


def build_parser() -> argparse.ArgumentParser:
    found, missing = load_plugins()
    hint = "".join(f"\n({needs(name, why)})" for name, why in missing.items())
    parser = Parser(prog="canvas", description="Canvas: a job service for diffusion LMs", missing=hint)
    commands = Commands(parser)
    register(commands)
    for register_plugin in found.values():
        register_plugin(commands)
    for name, why in missing.items():  # `canvas worker ...` in the API image: say what to install
        placeholder = commands.command(name, help=f"(not installed: {name} commands)", fn=_missing(name, why))
        placeholder.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _missing(name: str, reason: str) -> Command:
    def fail(args: argparse.Namespace, settings: Settings) -> int:
        print(f"canvas {name}: {needs(name, reason)}", file=sys.stderr)
        return 2

    return fail


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        sealing.configure(settings.webhook_sealing_keys)
    except (SettingsError, sealing.SealingError) as exc:
        print(f"canvas: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return args.fn(args, settings)


if __name__ == "__main__":
    sys.exit(main())
