"""What a command tells its user when it cannot do what was asked (the CLI prints the message, no traceback).

- UsageError: bad input on the command line (a flag, an option, a tag that does not exist): exit status 2.
- SessionError: the session cannot start or go on (the message says why and what to do): exit status 1.

A light module of its own, so that the CLI can catch them without importing the loop.
"""


class UsageError(ValueError):
    """Bad input on the command line: exit status 2."""


class SessionError(Exception):
    """The session cannot start or go on; the message says why and what to do: exit status 1."""
