"""The SSRF guard's look-ups in a forked process (gunicorn and Celery's prefork pool fork after import)."""

from __future__ import annotations

import os

from shared import ssrf


def test_a_forked_child_resolves_with_a_pool_of_its_own(monkeypatch) -> None:
    """The parent's look-up threads do not exist in a child: with the parent's pool the child's look-up
    waited for a thread that never came and failed at the deadline."""
    monkeypatch.setattr(ssrf, "RESOLVE_TIMEOUT_SECONDS", 2.0)
    allow = ssrf.parse_allow_list("127.0.0.0/8, ::1/128")
    assert ssrf.check_url("http://localhost:8080/", allow)  # the parent's pool now has an idle thread
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its look-up succeeds
        try:
            ssrf.check_url("http://localhost:8080/", allow)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
