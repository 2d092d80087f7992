"""app.py's Gradio app served on a free local port for a test, and a gradio_client Client on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(demo: Any, folder: Path) -> Iterator[Any]:
    """The Blocks `demo` on 127.0.0.1 (files under `folder` allowed) while the block runs: its Client."""
    from gradio_client import Client

    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(folder)])
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()
