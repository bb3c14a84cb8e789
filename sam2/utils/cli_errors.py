"""One rule for how every entry point ends on an error: one line on stderr and a documented exit code.

Every command-line tool (``sam2/tools/*``), ``pipelines.run`` and the training node wrap their ``main`` in
:func:`cli_entry`. An exception that reaches it becomes one line, ``error: <message>``, where the message
names the file, video, frame or setting at fault and what to do, and the exit code says what kind of
failure it was (docs/errors-and-exit-codes.md):

- ``0``: done;
- ``1``: the work itself failed (training diverged, an unexpected error: the line says to rerun with
  ``--debug``);
- ``2`` (:data:`EXIT_BAD_INPUT`): bad input or a bad setting; rerunning the same command cannot help;
- ``201`` (:data:`EXIT_UNREACHABLE`): a service (object storage, MLflow, an API server) stayed
  unreachable for the whole retry budget (``SAM2_RETRY_BUDGET_S``). It is >= 128 so that a PyTorchJob's
  ``restartPolicy: ExitCode`` replaces the pod, which then resumes.

A traceback is printed only with ``--debug`` on the command line or ``SAM2_DEBUG=1`` in the environment.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sys
import traceback
import zipfile
from collections.abc import Callable, Sequence

from sam2.utils.retry import ServiceUnreachableError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 201
DEBUG_ENV = "SAM2_DEBUG"
DEBUG_FLAG = "--debug"


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    """True when ``--debug`` is among ``argv`` or ``SAM2_DEBUG`` is set to something other than 0/false."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ServiceUnreachableError, ConnectionError, TimeoutError)):
        return True
    from sam2.storage import StorageUnreachableError

    return isinstance(exc, StorageUnreachableError)


def _is_bad_input(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            ValueError,  # DataPrepError, MaskDataError, DatasetError, PresetError and the settings checks
            KeyError,  # a missing key or model id (UnknownModelIdError); not IndexError, a bug
            FileNotFoundError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
        ),
    ):
        return True
    from sam2.storage import StorageError

    if isinstance(exc, StorageError):  # credentials, missing objects, unfinished publishes
        return True
    for module, name in (
        ("omegaconf.errors", "OmegaConfBaseException"),
        ("hydra.errors", "HydraException"),
        ("sam2.data.staging", "StagingError"),
        ("sam2.build_sam", "CheckpointMismatchError"),
        ("sam2.launch.training_node", "ResumeError"),  # complete checkpoint sets, none passing its check
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


def error_message(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's without the quotes str() adds)."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc)
    text = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return text or type(exc).__name__


def exit_code_for(exc: BaseException) -> int:
    """:data:`EXIT_UNREACHABLE`, :data:`EXIT_BAD_INPUT` or :data:`EXIT_FAILED` for an exception."""
    if _is_transient(exc):
        return EXIT_UNREACHABLE
    if _is_bad_input(exc):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def report_failure(
    exc: BaseException,
    debug: bool = False,
    prog: str | None = None,
    emit: Callable[[str], object] | None = None,
) -> int:
    """Print the one-line error for ``exc`` (and its traceback when ``debug``); returns the exit code.

    ``emit``: where the line goes instead of stderr (the training node logs it, so it carries the log's
    time stamp like the rest of a pod's log).
    """
    code = exit_code_for(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    message = error_message(exc)
    if code == EXIT_FAILED:
        message = (
            f"unexpected {type(exc).__name__}: {message} (rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the "
            "traceback)"
        )
    prefix = f"{prog}: " if prog else ""
    if emit is not None:
        emit(f"{prefix}error: {message}")
    else:
        print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
    return code


def cli_entry(main: Callable[[list[str]], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a tool's ``main(argv) -> exit code``: ``--debug`` is taken out of ``argv``, and an exception
    ends as one line on stderr with the exit code of :func:`exit_code_for` (a traceback only with
    ``--debug`` or ``SAM2_DEBUG=1``)."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = debug_enabled(args)
        args = [arg for arg in args if arg != DEBUG_FLAG]
        try:
            return main(args)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            return report_failure(exc, debug)

    return wrapper


def install_excepthook(prog: str | None = None) -> None:
    """The same rule where another program owns the top of the process (KFP's executor calls a pipeline
    component's function): an uncaught exception prints the one line and the process exits with its code
    (2 / 201 / 1) instead of Python's traceback and 1. ``SAM2_DEBUG=1`` keeps the traceback."""
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
        if not isinstance(exc, Exception):
            previous(exc_type, exc, tb)  # KeyboardInterrupt, SystemExit: as Python does
            return
        if debug_enabled():
            previous(exc_type, exc, tb)
        code = report_failure(exc, debug=False, prog=prog)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    sys.excepthook = hook
