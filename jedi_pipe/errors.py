"""The project's expected failures: bad input, missing data, a machine that lacks what a step needs.

The CLI prints these as one sentence (their message names the file and the reason) and exits 2.
Any other exception is a bug or a resource limit (out of memory, a shape mismatch inside torch,
a DALI error) and keeps its traceback.

Each subclass also derives from the built-in error its call sites raised before, so code that
catches FileNotFoundError or ValueError keeps working. This module imports nothing of the project.
"""
import sys


class JediPipeError(Exception):
    """An expected failure; the message is one sentence for the user."""


class InputError(JediPipeError, ValueError):
    """Input or settings that exist but cannot be used (wrong format, other settings, bad value)."""


class MissingError(JediPipeError, FileNotFoundError):
    """A file or folder that a step needs is not there (shards, an expert, a checkpoint, a run)."""


class UnavailableError(JediPipeError, RuntimeError):
    """This machine lacks what the step needs (a GPU, an optional package)."""


class DivergedError(JediPipeError, FloatingPointError):
    """The training loss stopped being a finite number (too high a learning rate, most often)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (torch's come with pages of advice), cut at `limit`."""
    return (str(e).splitlines() or ["empty"])[0][:limit]


def script_main(main) -> None:
    """Run a script's `main()` (bench/*.py) as the CLI runs a command: an expected failure is one
    `error:` line on stderr and exit status 2, anything else keeps its traceback."""
    try:
        main()
    except JediPipeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
