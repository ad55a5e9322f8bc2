"""``python -m portwatch`` and the ``portwatch`` command: :func:`portwatch.cli.main`, then the exit."""

from __future__ import annotations

import sys


def run() -> int:
    """Run :func:`portwatch.cli.main` on ``sys.argv``; return its exit status, after handing the
    objects the command made to the process's exit (:func:`gc.freeze`).

    Otherwise the interpreter's shutdown runs the cyclic collector over all of
    them, every module's classes and functions included: a few milliseconds
    of a short command (``portwatch scan``) spent on memory the exit releases
    anyway. What this skips is the finalization of objects in reference
    cycles at exit, which portwatch never relies on (its output is flushed,
    its files and sockets closed, by then). Only for a process that ends
    here: tests call :func:`portwatch.cli.main`, whose process goes on.
    """
    import gc

    from portwatch.cli import main

    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(run())
