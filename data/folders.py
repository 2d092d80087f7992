"""Class names of a user's folder dataset (`root/<class>/<file>`), shared by the image, audio and video
data modules: one scan, one set of error messages that show the expected layout."""

from __future__ import annotations

from pathlib import Path

from utils.errors import MissingFileError, UserError


def find_classes(dataset: str, root: str | None, layout: str) -> list[str]:
    """Sorted class sub-folder names of `root` (hidden folders skipped); `dataset` and `layout` name the
    config and the expected layout in the errors."""
    if not root:
        raise UserError(f"dataset {dataset!r} needs root=<folder> laid out as {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingFileError(f"{dataset}: root {path} does not exist or is not a folder")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise MissingFileError(f"{dataset}: no class sub-folders in {path}; expected {layout}")
    if len(classes) < 2:
        raise UserError(f"{dataset}: only 1 class sub-folder ({classes[0]!r}) in {path}; need at least 2 classes, "
                         f"laid out as {layout}")
    return classes


class ClassFolders:
    """Mixin for a data module: `class_names` / `num_classes`, known before `setup()` (the model is sized
    from them). The data module sets `_class_names` (a built-in dataset's fixed list, or None: scan
    `root` on first use), `_requested_classes` (the config's num_classes, or None) and the class
    attributes `FOLDER_DATASET` / `FOLDER_LAYOUT` for the messages."""

    FOLDER_DATASET: str
    FOLDER_LAYOUT: str
    root: str | None
    _class_names: list[str] | None
    _requested_classes: int | None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            names = find_classes(self.FOLDER_DATASET, self.root, self.FOLDER_LAYOUT)
            if self._requested_classes is not None and self._requested_classes != len(names):
                raise UserError(f"num_classes={self._requested_classes} but {self.FOLDER_DATASET} {self.root} has "
                                 f"{len(names)} classes ({', '.join(names)})")
            self._class_names = names
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
