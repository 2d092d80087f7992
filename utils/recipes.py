"""Which recipe / experiment files a composition pulled and the keys each set (Hydra's `runtime.choices`): for the
run's log (utils/build.recipe_lines) and for errors about a key the user never typed (utils/validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE_GROUPS = ("recipe", "experiment")  # config groups whose files set keys of other groups


def recipe_files(choices: Any) -> dict[str, list[tuple[str, Any]]]:
    """{"experiment/fsdd.yaml": [("model.net.f_max", 4000), ...]}: each recipe or experiment file of the
    composition (optional ones that are absent left out) with the leaves it sets, dotted."""
    files = {}  # experiment=vit_fashion data=fashion_mnist names the same file twice
    for key, name in dict(choices).items():
        group = str(key).split("@")[0]
        path = CONFIGS / group / f"{name}.yaml"
        if group not in RECIPE_GROUPS or name is None or not path.is_file():
            continue
        node = OmegaConf.to_container(OmegaConf.load(path))
        node.pop("defaults", None)
        files[f"{group}/{name}.yaml"] = leaves(node)
    return files


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """[("model.net.dim", 64), ...]: the leaves of nested dicts, with dotted keys."""
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [leaf for key, value in node.items()
            for leaf in leaves(value, f"{prefix}.{key}" if prefix else key)]


def set_by(dotted: str) -> str | None:
    """The recipe or experiment file of the running Hydra composition that set `dotted` (e.g.
    "experiment/fsdd.yaml"), or None: set elsewhere, or no Hydra run (called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        choices = HydraConfig.get().runtime.choices
    except ValueError:  # Hydra not initialised
        return None
    return next((name for name, keys in recipe_files(choices).items() if any(k == dotted for k, _ in keys)), None)
