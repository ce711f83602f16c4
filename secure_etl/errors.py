"""The base of errors a user can cause and fix; the CLI prints them as one line."""


class UserError(Exception):
    """Bad input (a config, a file, a flag): the message says what, where and what to do."""
