"""The one runner behind every ``pipeline`` command and every ``jobs/*.py`` script.

A command is a handler ``handler(args) -> dict`` registered on a sub-parser. :func:`run` gives
every handler the same surroundings:

* logging on stderr (``-q`` warnings only, ``-v`` debug and third-party warnings, ``-vv`` also
  Spark's and py4j's own loggers);
* signals: Ctrl-C (SIGINT) and SIGTERM raise :class:`Interrupted` in the main thread, so that
  the command's ``finally`` blocks clean up (a conversion removes its staging folder); a job
  failure that Spark reports *after* a signal (PySpark cancels the running jobs on Ctrl-C) is
  still an interruption;
* exit codes: :data:`EXIT_OK`, :data:`EXIT_FAILED` (a training rank failed, the demo missed its
  accuracy, or a bug: then with the traceback and a line asking for a report),
  :data:`EXIT_USER_ERROR` (a :class:`~pipeline.errors.PipelineError`, one paragraph on stderr),
  ``128 + signal`` (130 after Ctrl-C, 143 after SIGTERM; 141, as for SIGPIPE, when the reader
  of stdout went away: ``pipeline inspect URL | head`` ends quietly);
* output: the handler prints its human-readable report unless ``--json``; with ``--json`` the
  result is the only thing on stdout, one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pipeline.errors import PipelineError
from pipeline.quiet import quiet_all_third_party_warnings

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USER_ERROR",
    "CommandFailed",
    "Interrupted",
    "add_json_flag",
    "add_verbosity_flags",
    "configure_logging",
    "run",
    "signal_received",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2

ISSUES_URL = "https://github.com/spark-petastorm-pipeline/pipeline/issues"

# Loggers of third-party packages that repeat, at length, what our one-paragraph errors say.
NOISY_LOGGERS = ("py4j", "pyspark", "petastorm", "matplotlib", "PIL", "urllib3", "botocore", "fsspec")

Handler = Callable[[argparse.Namespace], "dict[str, Any] | None"]
_RUNNING: list[_Signals] = []  # the signal state of the commands running (run() in run())


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised in the main thread. A ``KeyboardInterrupt`` so that code that
    cleans up on Ctrl-C cleans up on SIGTERM too.

    Attributes:
        signum: The signal received.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class CommandFailed(Exception):
    """A command ran but did not succeed (a training rank failed, the demo missed its accuracy).

    Args:
        message: One paragraph for stderr.
        code: Exit status. Defaults to :data:`EXIT_FAILED`.
    """

    def __init__(self, message: str, *, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_json_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object, the only line on stdout"
    )


def add_verbosity_flags(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """``-v``/``-q``; ``default=argparse.SUPPRESS`` on sub-commands keeps the top level's values."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if default is None else default,
        help="more output: -v debug and third-party warnings, -vv also Spark's and py4j's logs",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if default is None else default,
        help="only warnings and errors",
    )


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr: this package at INFO (``-q``: WARNING, ``-v``: DEBUG); other packages'
    records only from ERROR up (``-v``: WARNING, ``-vv``: everything), and the same for Python
    warnings (third-party ones only with ``-v``)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    theirs = logging.DEBUG if verbose >= 2 else logging.WARNING if verbose else logging.ERROR
    logging.basicConfig(
        level=theirs, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("pipeline").setLevel(level)
    # Some set their own logger's level (pyspark's TorchDistributor: INFO): the handler decides.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OursOrAtLeast(theirs))
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    if verbose < 2:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_from_py4j)
    if verbose:
        warnings.resetwarnings()
        warnings.simplefilter("default")
    else:
        quiet_all_third_party_warnings()


class _OursOrAtLeast(logging.Filter):
    """Passes this package's records, and other loggers' from ``level`` up."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= self.level or record.name == "pipeline" or record.name.startswith("pipeline.")
        )


def _not_from_py4j(record: logging.LogRecord) -> bool:
    """py4j logs a broken call (e.g. one interrupted by Ctrl-C) on the root logger, with a traceback."""
    return f"{os.sep}py4j{os.sep}" not in record.pathname


def signal_received() -> int | None:
    """The SIGINT/SIGTERM the running command got, if any.

    The handler raises :class:`Interrupted` where the main thread is. Python drops an exception
    raised inside a finalizer (``__del__``, a weakref callback); the command raises it again
    once the main thread is out of it (usually within milliseconds), and code about to start
    long work may ask here too.
    """
    return next((s.received for s in reversed(_RUNNING) if s.received), None)


@dataclass
class _Signals:
    """Which signal arrived (if any); turns SIGINT/SIGTERM into :class:`Interrupted`."""

    received: int | None = None
    _dropped: bool = False  # Python dropped the Interrupted (raised inside a finalizer)
    _installed: bool = False
    _again: threading.Thread | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = self.received or signum
        if first or (self._dropped and self._installed):
            self._dropped = False
            raise Interrupted(self.received)

    def _unraisable(self, info: Any, previous: Callable[[Any], None]) -> None:
        """Python drops an :class:`Interrupted` raised inside a finalizer (``__del__``, a weakref
        callback) and prints "Exception ignored in ..." with a traceback. The signal must still
        stop the command: it is raised again, outside the finalizer, and nothing is printed."""
        if not (isinstance(info.exc_value, Interrupted) and self.received is not None):
            previous(info)
            return
        self._dropped = True
        if self._installed and (self._again is None or not self._again.is_alive()):
            self._again = threading.Thread(target=self._raise_again, name="pipeline-signal", daemon=True)
            self._again.start()

    def _raise_again(self, tries: int = 50) -> None:
        # Not from the hook itself: the handler would run at once, inside the hook. A short wait
        # lets the main thread leave the finalizer; if the handler lands in another one, again.
        # A real signal to the main thread, so that a blocking call there (a queue, a sleep, a
        # socket) is interrupted too; at most ``tries`` times (a handler stacked on ours, such as
        # the train driver's once it passed SIGTERM on to the ranks, may keep it).
        main = threading.main_thread().ident
        for _ in range(tries):
            time.sleep(0.01)
            if not (self._installed and self._dropped and self.received is not None and main):
                return
            signal.pthread_kill(main, self.received)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        saved = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        previous_hook = sys.unraisablehook

        def hook(info: Any) -> None:
            self._unraisable(info, previous_hook)

        sys.unraisablehook = hook
        self._installed = True
        try:
            yield self
        finally:
            self._installed = False
            if self._again is not None:  # no signal of its own after the handlers are put back
                self._again.join(1.0)
            if sys.unraisablehook is hook:
                sys.unraisablehook = previous_hook
            for s, previous in saved.items():
                signal.signal(s, previous)
            with contextlib.suppress(ValueError):
                _RUNNING.remove(self)


def _error(text: str) -> None:
    print(
        f"error: {textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)}",
        file=sys.stderr,
    )


def _interrupted(signum: int) -> int:
    name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    print(f"{name}: stopped and cleaned up", file=sys.stderr)
    return 128 + signum


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    """Under ``--json`` no progress line is drawn (conversions, training): ``PIPELINE_PROGRESS=0``."""
    previous = os.environ.get("PIPELINE_PROGRESS")
    os.environ["PIPELINE_PROGRESS"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PIPELINE_PROGRESS", None)
        else:
            os.environ["PIPELINE_PROGRESS"] = previous


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler(args)`` as a command: signals, errors, exit status, ``--json`` output.

    Logging must already be configured (:func:`configure_logging`).

    Returns:
        The exit status (see the module docstring).
    """
    signals = _Signals()
    _RUNNING.append(signals)
    as_json = bool(getattr(args, "json", False))
    # With --json, stdout holds the result only: anything printed meanwhile (TorchDistributor
    # echoes the ranks' output) goes to stderr.
    with (
        signals.installed(),
        contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(),
        _no_progress() if as_json else contextlib.nullcontext(),
    ):
        try:
            result = handler(args)
        except Interrupted as exc:
            return _interrupted(signals.received or exc.signum)
        except KeyboardInterrupt:
            return _interrupted(signals.received or signal.SIGINT)
        except PipelineError as exc:
            if signals.received:  # Spark reports the job it cancelled on Ctrl-C as a failure
                return _interrupted(signals.received)
            _error(str(exc))
            return EXIT_USER_ERROR
        except CommandFailed as exc:
            if signals.received:
                return _interrupted(signals.received)
            _error(str(exc))
            return exc.code
        except BrokenPipeError:
            return _stdout_gone()
        except Exception:
            if signals.received:
                return _interrupted(signals.received)
            traceback.print_exc()
            print(
                f"error: this is a bug in pipeline; please report it with the traceback above at {ISSUES_URL}",
                file=sys.stderr,
            )
            return EXIT_FAILED
    if signals._dropped and signals.received:  # dropped in a finalizer as the command ended
        return _interrupted(signals.received)
    if as_json and result is not None:
        try:
            print(json.dumps(result, default=str, sort_keys=True), flush=True)
        except BrokenPipeError:
            return _stdout_gone()
    return EXIT_OK


def _stdout_gone() -> int:
    """The reader of stdout went away (``| head``): no traceback, nothing more written to it."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would fail
    return 128 + signal.SIGPIPE
