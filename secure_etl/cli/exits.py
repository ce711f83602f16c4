"""The ``secure-etl`` exit codes, the same for every command, and the one refusal."""

EXIT_OK = 0  # done; every check passed
EXIT_FAILED = 1  # a check failed, or the other side (a CA, the audit log) refused
EXIT_BAD_INPUT = 2  # a flag, file or config the user must fix (a ``UserError``)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports a command it killed: 128 + 2


class Refused(Exception):
    """The command ran, and the answer is no (a CA refused, a certificate failed
    verification, the audit log refused a record): one line on stderr, exit 1."""
