"""searchsr's one error model: what the user caused is one line, anything else is a bug.

``searchsr.cli.main`` prints a ``SearchsrError`` (and an ``OSError``: a missing, unreadable or
full file system) as one ``searchsr: error: ...`` line and exits with the error's
``exit_code``; every other exception is a bug in searchsr and keeps its traceback (exit 1).
``--debug`` shows the traceback for every error.

``UsageError`` is also a ``ValueError`` so that library callers (and ``except ValueError``)
keep working: bad input to a library function is a ``ValueError`` in the Python sense too.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """An exception as one line of text (libraries' messages can run over many), for wrapping a
    library's error into one of ours."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class SearchsrError(Exception):
    """A failure the user can act on (bad input, a result that did not verify, a study that
    stopped); reported in one line."""

    exit_code = 2


class UsageError(SearchsrError, ValueError):
    """Bad input: an argument, a file, a folder, a storage URL. Exit code 2, nothing written."""


class VerificationError(SearchsrError, ValueError):
    """An exported model disagrees with PyTorch: nothing was written. Exit code 2."""


class DivergedError(SearchsrError, RuntimeError):
    """Training produced a non-finite loss. Exit code 1 (the input was fine; the run failed)."""

    exit_code = 1


class TooManyFailures(SearchsrError, RuntimeError):
    """``--max-failures`` trials failed: the study stopped (what completed is kept). Exit code 1."""

    exit_code = 1


class NothingCompleted(SearchsrError, RuntimeError):
    """Every new trial of a search failed. Exit code 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``timeout``, ``kill``): handled like Ctrl-C, what finished is kept.
    Exit code 143 (128 + SIGTERM), as a shell reports a process SIGTERM ended."""

    exit_code = 143


class RetrainFailed(SearchsrError, RuntimeError):
    """Some retraining trials failed; rerunning resumes them. Exit code 1."""

    exit_code = 1
