"""A threaded WSGI server for the embedded stack and tests: `python -m api.serve --port 8000`.

Production runs gunicorn (`gunicorn 'api.wsgi:app'`, see deploy/); this one needs nothing else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from werkzeug.serving import make_server

from api.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-sweeper", action="store_true", help="do not run the outbox/lease sweeper")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, run_sweeper=not args.no_sweeper, recover_batches=True)
    server = make_server(args.host, args.port, app, threaded=True)

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger(__name__).info("Canvas API listening on http://%s:%d", args.host, server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    main()
