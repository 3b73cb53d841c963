"""The institution file reaches `eduaiq org import` as the operator wrote it.

Given as text it is kept byte for byte in the ConfigMap. When self-hosted models
are registered, the import Job's init step adds their providers; everything else
must then read back exactly as the application's YAML reader (PyYAML) reads the
original, including the values Helm's own reader would get wrong (`Y`, dates).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import CHART, VALUE_SETS, Rendered, helm, imported_org_text, render_chart
from hypothesis import given, settings
from hypothesis import strategies as st

SLUG = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
# Strings YAML readers disagree on: Helm's reads Y/n as booleans, PyYAML keeps them text.
TRICKY_TEXT = st.one_of(
    st.text(min_size=1, max_size=30), st.sampled_from(["Y", "n", "N", "y", "on", "No", "1:30", "0x1F"])
)
AMOUNT = st.one_of(
    st.integers(min_value=0, max_value=2**53),
    st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False).map(float),
)


def org_text(rendered: Rendered) -> str:
    (configmap,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-org")]
    text: str = configmap["data"]["org.yaml"]
    return text


@st.composite
def institution_files(draw: st.DrawFn) -> dict[str, Any]:
    root = draw(SLUG)
    children = draw(st.lists(SLUG.filter(lambda s: s != root), max_size=4, unique=True))
    start = draw(st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2035, 1, 1)))
    return {
        "institution": {
            "id": root,
            "name": draw(TRICKY_TEXT),
            "currency": "USD",
            "timezone": "America/Chicago",
            "semesters": [
                {"id": "s1", "start": start, "end": start + dt.timedelta(days=draw(st.integers(1, 200)))}
            ],
        },
        "providers": [
            {
                "id": "openai",
                "type": "openai",
                "base_url": "https://api.openai.com/v1",
                "api_key_env": "OPENAI_API_KEY",
                "models": [
                    {
                        "id": "gpt-4o-mini",
                        "upstream": "gpt-4o-mini",
                        "max_output_tokens": draw(st.integers(1, 2**31)),
                        "price": {"input_per_mtok": draw(AMOUNT), "output_per_mtok": draw(AMOUNT)},
                    }
                ],
            }
        ],
        "units": [
            {
                "id": root,
                "kind": "university",
                "budget": {
                    "period": "month",
                    "cost": {"fixed": draw(AMOUNT)},
                    "tokens": {"fixed": draw(AMOUNT)},
                },
                "children": [
                    {"id": c, "kind": "college", "budget": {"cost": {"percent": draw(st.integers(0, 100))}}}
                    for c in children
                ],
            }
        ],
    }


@st.composite
def formatted(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    """The same document written the many ways people write YAML."""
    text = yaml.safe_dump(
        doc,
        sort_keys=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, None])),
        indent=draw(st.sampled_from([2, 4])),
        allow_unicode=draw(st.booleans()),
        width=draw(st.sampled_from([40, 80, 1000])),
    )
    header = draw(st.sampled_from(["", "# State University\n", "---\n", "# héllo ✓\n\n"]))
    trailer = draw(st.sampled_from(["", "\n", "\n\n", "# end\n"]))
    return header + text + trailer


GPU = VALUE_SETS["gpu"]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_text_content_is_kept_byte_for_byte(data: st.DataObject) -> None:
    text = data.draw(formatted(data.draw(institution_files())))
    rendered = render_chart({"org": {"content": text}})
    assert org_text(rendered) == text
    assert imported_org_text(rendered) == text


@pytest.mark.parametrize("name", ["\x85", "a\u2028b\u2029c", "tab\there"])
def test_characters_yaml_readers_take_for_line_breaks_are_kept(name: str) -> None:
    """NEL (U+0085) is a line break to YAML readers (PyYAML, and the YAML 1.1 reader Kubernetes uses) and
    toJson leaves it raw: a name holding one arrived folded (found by the property test above in CI)."""
    text = f"institution:\n  id: c\n  name: '{name}'\n"
    rendered = render_chart({"org": {"content": text}})
    assert org_text(rendered) == text
    assert imported_org_text(rendered) == text


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_registering_models_changes_nothing_else_in_the_file(data: st.DataObject) -> None:
    doc = data.draw(institution_files())
    text = data.draw(formatted(doc))
    imported = yaml.safe_load(imported_org_text(render_chart({**GPU, "org": {"content": text}})))
    generated = [p for p in imported["providers"] if p["id"].startswith("campus-")]
    assert [p["models"][0]["id"] for p in generated] == [m["name"] for m in GPU["selfHosted"]["models"]]
    kept = {**imported, "providers": [p for p in imported["providers"] if not p["id"].startswith("campus-")]}
    assert kept == yaml.safe_load(text)


def test_content_that_is_not_a_mapping_refuses_to_render() -> None:
    with pytest.raises(helm.HelmRenderError, match="not a YAML mapping"):
        render_chart({"org": {"content": "units: [unclosed\n"}})


def test_merge_step_refuses_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "org.yaml").write_text("- just\n- a list\n")
    (tmp_path / "providers.yaml").write_text("providers: []\n")
    result = subprocess.run(
        [
            sys.executable,
            str(CHART / "files" / "merge_org.py"),
            *(str(tmp_path / n) for n in ("org.yaml", "providers.yaml", "out.yaml")),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "must be a YAML mapping" in result.stderr
    assert not (tmp_path / "out.yaml").exists()


def test_the_spec_example_round_trips() -> None:
    """The spec's example, supplied the way the guide says (`--set-file org.content=...`)."""
    text = (
        "institution: {id: stateu, name: State University, currency: USD, timezone: America/Chicago,\n"
        "  semesters: [{id: fall-2026, start: 2026-08-24, end: 2026-12-18}]}\n"
        "providers:\n"
        "  - id: openai\n"
        "    type: openai\n"
        "    base_url: https://api.openai.com/v1\n"
        "    api_key_env: OPENAI_API_KEY   # secrets come from the environment\n"
        "    models:\n"
        "      - {id: gpt-4o, upstream: gpt-4o, vision: true, max_output_tokens: 16384,\n"
        "         price: {input_per_mtok: 2.50, output_per_mtok: 10.00}}\n"
        "units:\n"
        "  - id: stateu\n"
        "    kind: university\n"
        "    budget: {period: month, cost: {fixed: 10000}, tokens: {fixed: 500000000}}\n"
        "    models: [gpt-4o]\n"
    )
    assert imported_org_text(render_chart({"org": {"content": text}})) == text
    imported = yaml.safe_load(imported_org_text(render_chart({**GPU, "org": {"content": text}})))
    assert imported["units"][0]["budget"]["tokens"]["fixed"] == 500000000
    assert imported["institution"]["semesters"][0]["start"] == dt.date(2026, 8, 24)
    assert [p["id"] for p in imported["providers"]] == ["openai", "campus-qwen2-vl-7b", "campus-llama-3-1-8b"]
