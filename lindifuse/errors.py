"""Exception types shared across lindifuse.

Every error that can reach the user carries a one-line message that names the file (or key) and
the problem, so the CLI can print ``lindifuse: <message>`` without a traceback.
"""

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...): messages name keys
    and paths taken from untrusted files, which must not be able to break a message (or a log
    file) into several lines."""
    return text.translate(_CONTROL)


class LindiError(Exception):
    """Base class: a problem the user should see as one line (control characters in the
    message, e.g. from a key name, are escaped)."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)


class SourceError(LindiError):
    """The SOURCE as a whole is unusable (bad JSON, truncated tar, unreachable URL...)."""


class FormatError(SourceError):
    """A container's bytes do not follow the LINDI format (tar layout, index, entry, refs)."""


class RefError(LindiError):
    """One reference cannot be served (404, out of range, bad base64): EIO on that file only."""


class OriginError(RefError):
    """The origin server could not deliver: connection refused, DNS failure, timeout, 5xx or
    429 after the retries ran out, or ``--offline``. Bytes cached earlier may still be served
    (stale-if-error); a 404 or 403 is a plain RefError (the object is gone or forbidden)."""


class VersionChanged(RefError):
    """A response carried another validator (ETag / Last-Modified) than the version of the
    object this mount already served: the object was replaced on the server. Never mixed."""


class HostNotAllowed(RefError):
    """A reference (or a redirect) leads to a host outside ``--allowed-hosts``."""
