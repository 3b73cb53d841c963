"""Add the chart's self-hosted model providers to an institution file.

Runs in the org-import Job, before `eduaiq org import`, with the image's own
Python and PyYAML. The merge happens here and not in a Helm template because
Helm's YAML reader disagrees with the application's: it reads `y` and `n` as
booleans and dates as strings, which would silently change the file. Here the
operator's file is read exactly as the application reads it.

Usage: python3 merge_org.py ORG_YAML PROVIDERS_YAML OUTPUT_YAML
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def merge(org: dict[str, Any], generated: list[dict[str, Any]]) -> dict[str, Any]:
    """The file with `generated` appended to its providers, replacing any of the same id."""
    ids = {provider["id"] for provider in generated}
    kept = [p for p in org.get("providers") or [] if not (isinstance(p, dict) and p.get("id") in ids)]
    return {**org, "providers": kept + generated}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    org_path, providers_path, out_path = (Path(a) for a in argv)
    org = yaml.safe_load(org_path.read_text(encoding="utf-8"))
    if not isinstance(org, dict):
        print(f"{org_path}: the institution file must be a YAML mapping", file=sys.stderr)
        return 1
    generated = yaml.safe_load(providers_path.read_text(encoding="utf-8"))["providers"]
    merged = merge(org, generated)
    out_path.write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding="utf-8")
    print(f"{out_path}: added providers {', '.join(p['id'] for p in generated)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
