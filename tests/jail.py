"""Tests that need the Linux jail: they fail where it is unavailable, unless skipped on purpose.

    from jail import needs_jail

    @needs_jail
    def test_...(...):

A guard whose test skips silently where the guard is missing looks like a guard that works. So these tests fail
with the reason (and how to enable user namespaces) where the jail cannot be made, as the browser tests fail
without Chromium; AUTORESEARCH_SKIP_JAIL=1 skips them knowingly.
"""

from __future__ import annotations

import functools
import os

import pytest

from autoresearch import sandbox


def require_jail() -> None:
    """Fail (or skip, with AUTORESEARCH_SKIP_JAIL=1) the calling test where jobs cannot be jailed."""
    reason = sandbox.unavailable()
    if reason is None:
        return
    if os.environ.get("AUTORESEARCH_SKIP_JAIL") == "1":
        pytest.skip(f"no jail here ({reason}) and AUTORESEARCH_SKIP_JAIL=1: this isolation test did not run")
    pytest.fail(f"this test needs the Linux jail, which is unavailable here: {reason}. {sandbox.HOW_TO_ENABLE} "
                "(AUTORESEARCH_SKIP_JAIL=1 skips these tests)", pytrace=False)


def needs_jail(test):
    @functools.wraps(test)
    def checked(*args, **kwargs):
        require_jail()
        return test(*args, **kwargs)

    return checked
