"""The command line. ``app`` assembles the parser and dispatches to one module per command
(``mount``, ``umount``, ``info``, ``create``, ``check``, ``compact``, ``index``, ``stats``,
``cache``), each thin, calling into the layers below; ``args`` holds the argument types they
share."""


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The ``lindifuse`` entry point (``lindifuse.cli.app.main``, imported on call)."""
    from lindifuse.cli.app import main as app_main

    return app_main(argv, prog)
