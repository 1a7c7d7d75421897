"""The admin dashboard (DESIGN.md section 11): jobs, fine-tunes, batches, workers and queues, webhooks.

Admin keys only: a login form takes an admin API key and opens a signed session cookie; every POST
carries a CSRF token. Modules: session (login, guard, CSRF), errors (HTML error pages), queries (reads),
actions (cancel, retry), charts (inline SVG), and one module of views per page.
"""

from __future__ import annotations

from api.admin import batches, errors, fine_tunes, formatting, jobs, session, webhooks, workers  # noqa: F401  (they register routes)
from api.admin.blueprint import bp

__all__ = ["bp"]
