from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from providers import check_model, effective_models

MODELS = ["qwen2-vl-2b", "llama-3.1-8b", "gpt-4o", "gpt-4o-mini"]
model_sets = st.lists(st.sampled_from(MODELS), unique=True)


@given(
    model_sets,
    st.one_of(st.none(), st.sampled_from(MODELS)),
    st.one_of(st.none(), st.sampled_from([*MODELS, "other"])),
)
def test_allowed_exactly_when_the_chosen_model_is_in_the_set(
    allowed: list[str], default: str | None, requested: str | None
) -> None:
    d = check_model(allowed, default, requested)
    chosen = requested or default
    assert d.allowed == (chosen is not None and chosen in allowed)
    assert d.allowed_models == tuple(allowed)
    if d.allowed:
        assert d.model == chosen and d.reason is None
    else:
        assert d.model is None and d.reason


def test_the_refusal_lists_what_is_allowed() -> None:
    d = check_model(["llama-3.1-8b", "gpt-4o-mini"], None, "gpt-4o")
    assert d.reason == "model 'gpt-4o' is not allowed here; allowed: llama-3.1-8b, gpt-4o-mini"
    assert check_model([], None, "gpt-4o").reason == "model 'gpt-4o' is not allowed here; allowed: none"
    assert check_model(["gpt-4o"], "gpt-4o", None).model == "gpt-4o"


@given(model_sets, st.one_of(st.none(), model_sets))
def test_a_unit_narrows_never_widens(parent: list[str], own: list[str] | None) -> None:
    eff = effective_models(own, parent)
    assert set(eff) <= set(parent)
    if own is None:
        assert eff == tuple(parent)
    else:
        assert set(eff) == set(own) & set(parent)
