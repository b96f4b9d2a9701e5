"""Exception types shared across lindifuse.

Every error that can reach the user carries a one-line message that names the file (or key) and
the problem, so the CLI can print ``lindifuse: <message>`` without a traceback.
"""


class LindiError(Exception):
    """Base class: a problem the user should see as one line."""


class SourceError(LindiError):
    """The SOURCE as a whole is unusable (bad JSON, truncated tar, unreachable URL...)."""


class FormatError(SourceError):
    """A container's bytes do not follow the LINDI format (tar layout, index, entry, refs)."""


class RefError(LindiError):
    """One reference cannot be served (404, out of range, bad base64): EIO on that file only."""
