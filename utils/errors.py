"""One error path for every command line: a mistake in what the user gave is a `UserError`, printed as
one line `error: <message>` on stderr with exit code 2; anything else is a bug and keeps its traceback.

Usable-but-odd input is not an error: the code that adapts it says what it did with `note()`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, NoReturn

USER_ERROR_EXIT = 2  # what argparse uses for a bad argument


class UserError(ValueError):
    """A value, file or directory the user gave is wrong; the message names it and what was expected.
    (A ValueError, so code that catches ValueError keeps working.)"""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class FileFormatError(UserError, RuntimeError):
    """A file exists but cannot be read as what the model or data needs (corrupt, wrong kind, NaN samples)."""


class MissingDataError(UserError, RuntimeError):
    """A dataset is not on this machine and could not be fetched; the message says how to get it."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def note(message: str) -> None:
    """Tell the user what was done to odd-but-usable input (resampled, truncated, ...)."""
    print(f"note: {message}", file=sys.stderr)


# Keys that moved out of the model config to the top level (not constructor arguments).
RUN_KEYS = {"model.pretrained": "pretrained", "model.preprocess": "preprocess"}


def _message(err: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, MissingMandatoryValue):  # e.g. `ckpt_path: ???` or `data.root: ???` left unset
        key = getattr(err, "full_key", None) or str(err).split(":", 1)[-1].strip().splitlines()[0]
        return f"{key} is required: give {key}=<value> on the command line"
    if isinstance(err, (ConfigCompositionException, MissingConfigException, OverrideParseException)):
        # Hydra's own text names the key or config group; the first line of its cause (OmegaConf's) says why.
        text = one_line(str(err).split("Config search path:")[0])  # the search path is Hydra's business
        cause = str(err.__cause__ or "").strip().splitlines()
        text = f"{text}; {cause[0].strip()}" if cause and cause[0].strip() not in text else text
        for old, new in RUN_KEYS.items():
            if f"'{old}'" in text:
                text += f"; {old} is the run key {new} now ({new}=<value>)"
        return text
    return None


def one_line(text: str) -> str:
    """Hydra's multi-line messages as one line: an indented list joined by ', ', sentences by ' ' or '; '."""
    out = ""
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        if not out or out.endswith((":", ".")):
            sep = " " if out else ""
        else:
            sep = ", " if raw[:1] in ("\t", " ") else "; "
        out += sep + line
    return out


def user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: a user error exits 2 with its message (Hydra would otherwise print
    'Error executing job ...' and a traceback); a bug propagates with its traceback."""

    @functools.wraps(task)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            message = _message(err)
            if message is None:
                raise
            fail(message)

    return wrapped


_HYDRA_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name",
                      "-cn", "--config-dir", "-cd", "--experimental-rerun")


def path_argument_as(key: str, argv: list[str]) -> list[str]:
    """`evaluate.py RUN_DIR` as `evaluate.py ckpt_path=RUN_DIR`: a bare argument naming an existing path
    becomes `key=<it>` (Hydra would refuse it as an override without '=')."""
    out = list(argv)
    if any(a.startswith(f"{key}=") for a in argv):
        return out
    for i, arg in enumerate(argv):
        follows_flag = i > 0 and argv[i - 1] in _HYDRA_VALUE_FLAGS
        if "=" not in arg and not arg.startswith("-") and not follows_flag and os.path.exists(arg):
            out[i] = f"{key}={arg}"
            break
    return out


def run_hydra(main: Callable[[], Any], path_key: str | None = None) -> None:
    """`if __name__ == "__main__": run_hydra(main)`: Hydra's config errors (a typo in a key, an unknown
    config group, a bad override) exit 2 with one message that keeps Hydra's key names; bugs keep their
    full traceback. With `path_key`, a bare path argument is read as `path_key=<path>`."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing and exiting 1 itself
    if path_key is not None:
        sys.argv[1:] = path_argument_as(path_key, sys.argv[1:])
    try:
        main()
    except Exception as err:
        message = _message(err)
        if message is None:
            raise
        fail(message)

class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a bad flag value, a missing argument) as the house's: one `error:` line, exit 2,
    without the usage block before it (predict.py, app.py)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (python {self.prog} --help lists the options)\n")
