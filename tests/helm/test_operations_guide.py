"""docs/operations.md stays true to the chart: every value path it names exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from helm_chart import CHART, render_chart

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
MODEL_KEYS = {"name", "model", "servedModelName", "args", "gpus", "replicas", "resources", "shmSize",
              "cacheSize", "weights", "catalogue", "nodeSelector", "tolerations", "affinity"}  # fmt: skip
DOTTED = re.compile(r"`([a-z][A-Za-z]*(?:\.[A-Za-z][A-Za-z0-9_]*)+)")


def resolves(path: list[str], node: Any) -> bool:
    if not path:
        return True
    if isinstance(node, dict):
        if path[0] in node:
            return resolves(path[1:], node[path[0]])
        # Maps whose keys are free-form (e.g. `settings.upstream_read_timeout`).
        return node == {} and len(path) == 1
    if isinstance(node, list):
        return path[0] in MODEL_KEYS
    return False


def named_value_paths() -> set[str]:
    text = GUIDE.read_text(encoding="utf-8")
    found = set()
    for match in DOTTED.finditer(text):
        path = match.group(1)
        if path.split(".")[0] in VALUES and not path.endswith((".yaml", ".py", ".md")):
            found.add(path)
    return found


def test_the_guide_names_value_paths() -> None:
    assert {
        "database.sslMode",
        "selfHosted.registerInOrg",
        "org.importOnUpgrade",
    } <= named_value_paths()


def test_every_value_path_in_the_guide_exists() -> None:
    missing = sorted(p for p in named_value_paths() if not resolves(p.split("."), VALUES))
    assert not missing, f"docs/operations.md names values the chart does not have: {missing}"


def test_object_names_in_the_guide_are_rendered() -> None:
    """Names like `eduaiq-gateway` in the guide match what a release called `eduaiq` creates."""
    names = {o["metadata"]["name"] for o in render_chart({}).objects}
    text = GUIDE.read_text(encoding="utf-8")
    mentioned = set(
        re.findall(r"\beduaiq-(?:gateway|admin-api|consumer|worker|beat|migrate|org-import|org)\b", text)
    )
    assert mentioned and mentioned <= names
