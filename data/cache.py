"""Cache keys of generated datasets: a version and a hash of everything the data depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def cache_key(version: int, **fields: Any) -> str:
    """"v<version>-<12 hex digits>": a new version or any changed field gives a new folder (old caches are ignored)."""
    blob = json.dumps({"version": version, **fields}, sort_keys=True)
    return f"v{version}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
