"""The entry points as a user runs them: in this process through runpy (`command`, the default: no new
interpreter importing torch and Lightning), or in a real subprocess (`run_cli`, for what only a process shows:
its exit status and stderr as a shell sees them, DDP's re-launch, environment read at import time)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import runpy
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra

from helpers.config import ROOT
from models.attention import attention_kernel, set_attention_kernel


class Finished(NamedTuple):
    """What a finished command left: compares equal to the tuple (returncode, stdout, stderr)."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def restored_globals() -> Iterator[None]:
    """Whatever an entry point changes process-wide is put back on exit: Hydra's global state, the attention
    kernel switch, torch threads, RNG states, cwd, argv, environment, logging handlers and levels, warnings."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {name: (lg.level, lg.propagate, lg.disabled, lg.handlers[:])
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    kernel, threads = attention_kernel(), torch.get_num_threads()
    cwd, argv, environ = os.getcwd(), sys.argv[:], dict(os.environ)
    rng = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:] = handlers  # Hydra's job logging would outlive the command
        root.setLevel(level)
        for name, (lvl, propagate, disabled, hs) in loggers.items():
            lg = logging.getLogger(name)
            lg.setLevel(lvl)
            lg.propagate, lg.disabled, lg.handlers[:] = propagate, disabled, hs
        set_attention_kernel(kernel)
        torch.set_num_threads(threads)
        os.chdir(cwd)
        sys.argv[:] = argv
        for key in set(os.environ) - set(environ):  # e.g. HYDRA_FULL_ERROR, PL_GLOBAL_SEED
            del os.environ[key]
        os.environ.update(environ)
        torch.random.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])


def command(script: str, *args: str, check: bool = False) -> Finished:
    """`python <script> <args>` in this process (its real `__main__` block, run by runpy), its output captured.
    A bug is raised as in a traceback; with check=True a nonzero exit status fails the calling test too."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        with restored_globals(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = [script, *args]
            os.chdir(ROOT)  # as run_cli runs it: paths.root_dir is the working directory
            try:
                runpy.run_path(str(ROOT / script), run_name="__main__")
            except SystemExit as exit:
                code = exit.code
    except BaseException:  # a bug: its traceback goes up; what the command printed goes to the test's report
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())
        raise
    code = 0 if code is None else code if isinstance(code, int) else 1  # sys.exit("text") exits 1
    done = Finished(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({code}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-5000:]}")
    return done


def run(script: str, *args: str) -> Finished:
    """`command` that must succeed."""
    return command(script, *args, check=True)


def run_cli(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py / ... in a new interpreter, as a user would; returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc
