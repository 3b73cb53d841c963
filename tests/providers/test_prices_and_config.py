"""Prices resolve at config time (contract > litellm list price > refusal) and the section compiles to deployments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from providers import ConfigError, NormalisedUsage, Price, build_router, compile_deployments, cost_micros
from providers.prices import litellm_cost_map, litellm_price, per_token_to_micros_per_mtok, price_to_micros

# The worked example: the repository's copy (tests/orgfile), else shared/ beside the clone.
_HERE = Path(__file__).resolve()
STATEU = next(
    p
    for p in (
        _HERE.parents[1] / "orgfile" / "stateu.yaml",
        _HERE.parents[3] / "shared" / "fixtures" / "stateu.yaml",
        Path("/work/shared/fixtures/stateu.yaml"),
    )
    if p.is_file()
)


def test_litellm_list_prices_convert_to_micro_units_per_mtok() -> None:
    entry = litellm_cost_map()["gpt-4o"]
    price = litellm_price("openai", "gpt-4o")
    assert price is not None and price.source == "litellm"
    assert price.input_per_mtok == round(entry["input_cost_per_token"] * 1e12)
    assert price.output_per_mtok == round(entry["output_cost_per_token"] * 1e12)
    assert price.cached_input_per_mtok == round(entry["cache_read_input_token_cost"] * 1e12)
    together = litellm_price("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo")
    assert together is not None and together.input_per_mtok > 0
    assert litellm_price("vllm", "gpt-4o") is None  # self-hosted never takes a list price
    assert litellm_price("openai", "no-such-model-xyz") is None


def test_contract_price_overrides_the_list_price() -> None:
    [dep] = compile_deployments(
        [
            {
                "id": "openai",
                "type": "openai",
                "api_key_env": "OPENAI_API_KEY",
                "models": [{"id": "gpt-4o", "price": {"input_per_mtok": 1.25, "output_per_mtok": 5}}],
            }
        ]
    )
    assert dep.price == Price(1_250_000, 5_000_000, None, "contract")
    assert dep.base_url == "https://api.openai.com/v1"


def test_commercial_model_without_price_takes_litellms() -> None:
    [dep] = compile_deployments(
        [
            {
                "id": "openai",
                "type": "openai",
                "api_key_env": "OPENAI_API_KEY",
                "models": [{"id": "gpt-4o-mini"}],
            }
        ]
    )
    assert dep.price.source == "litellm" and dep.price == litellm_price("openai", "gpt-4o-mini")


def test_every_unpriceable_model_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        compile_deployments(
            [
                {
                    "id": "campus",
                    "type": "vllm",
                    "base_url": "http://gpu:8000/v1",
                    "models": [{"id": "llama"}],
                },
                {
                    "id": "oa",
                    "type": "openai",
                    "api_key_env": "K",
                    "models": [{"id": "gpt-4o"}, {"id": "gpt-unknown-9"}],
                },
                {"id": "x", "type": "openai-compatible", "models": []},
                {
                    "id": "ant",
                    "type": "anthropic",
                    "models": [{"id": "c", "price": {"input_per_mtok": 1, "output_per_mtok": 2}}],
                },
            ]
        )
    problems = err.value.problems
    assert any(p.startswith("providers[0].models[0].price: self-hosted model 'llama'") for p in problems)
    assert any(p.startswith("providers[1].models[1].price: litellm has no price") for p in problems)
    assert "providers[2].base_url: required for type openai-compatible" in problems
    assert any(p.startswith("providers[3].api_key_env: required") for p in problems)
    assert not any(
        "models[0].price" in p and "providers[1]" in p for p in problems
    )  # gpt-4o has a list price
    assert len(problems) == 4


def test_list_prices_are_usd_only() -> None:
    with pytest.raises(ConfigError) as err:
        compile_deployments(
            [{"id": "oa", "type": "openai", "api_key_env": "K", "models": [{"id": "gpt-4o"}]}], currency="EUR"
        )
    assert "USD, not EUR" in err.value.problems[0]


def test_schema_errors_and_cross_references_are_reported_by_path() -> None:
    with pytest.raises(ConfigError) as err:
        compile_deployments(
            [
                {"id": "a", "type": "vllm", "base_url": "gpu01", "models": []},
                {"id": "b", "type": "nosuch", "models": []},
                {
                    "id": "c",
                    "type": "vllm",
                    "base_url": "http://h/v1",
                    "models": [
                        {"id": "m", "price": {"input_per_mtok": -1, "output_per_mtok": 1}},
                    ],
                },
            ]
        )
    text = "\n".join(err.value.problems)
    assert "providers[0].base_url: Value error, must be an http:// or https:// URL" in text
    assert "providers[1].type:" in text
    assert "providers[2].models[0].price.input_per_mtok:" in text
    with pytest.raises(ConfigError) as err2:
        compile_deployments(
            [
                {
                    "id": "a",
                    "type": "vllm",
                    "base_url": "http://h/v1",
                    "models": [
                        {
                            "id": "m",
                            "fallbacks": ["m", "ghost"],
                            "image_tokens": "bogus",
                            "price": {"input_per_mtok": 1, "output_per_mtok": 1},
                        },
                        {"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}},
                    ],
                },
                {"id": "a", "type": "vllm", "base_url": "http://h2/v1", "models": []},
            ],
            known_image_rules=frozenset({"qwen2-vl"}),
        )
    assert set(err2.value.problems) == {
        "providers[0].models[0].fallbacks[0]: a model cannot fall back to itself",
        "providers[0].models[0].fallbacks[1]: unknown model 'ghost'",
        "providers[0].models[0].image_tokens: unknown rule 'bogus' (one of qwen2-vl)",
        "providers[0].models[1].id: duplicate model id 'm' in provider 'a'",
        "providers[1].id: duplicate provider id 'a'",
    }


def test_replicas_become_one_tier_and_providers_are_tried_in_file_order() -> None:
    deps = compile_deployments(
        [
            {
                "id": "campus",
                "type": "vllm",
                "base_url": "http://g1:8000/v1",
                "replicas": ["http://g2:8000/v1"],
                "models": [{"id": "llama", "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.08}}],
            },
            {
                "id": "tg",
                "type": "together",
                "api_key_env": "TG",
                "models": [{"id": "llama", "upstream": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"}],
            },
        ]
    )
    assert [d.id for d in deps] == ["campus#0/llama", "campus#1/llama", "tg/llama"]
    assert [d.metrics_url for d in deps] == ["http://g1:8000/metrics", "http://g2:8000/metrics", None]
    assert [d.health_check for d in deps] == [True, True, False]
    router = build_router(
        [
            {
                "id": "campus",
                "type": "vllm",
                "base_url": "http://g1:8000/v1",
                "replicas": ["http://g2:8000/v1"],
                "models": [{"id": "llama", "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.08}}],
            },
            {
                "id": "tg",
                "type": "together",
                "api_key_env": "TG",
                "priority": -1,
                "models": [{"id": "llama", "upstream": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"}],
            },
        ]
    )
    assert router.chain("llama") == [["tg/llama"], ["campus#0/llama", "campus#1/llama"]]


def test_the_worked_example_compiles() -> None:
    doc = yaml.safe_load(STATEU.read_text())
    deps = compile_deployments(doc["providers"], currency=doc["institution"]["currency"])
    by_model = {d.model_id: d for d in deps}
    assert by_model["qwen2-vl-2b"].price == Price(20_000, 40_000, None, "internal")
    assert by_model["gpt-4o"].price == Price(2_500_000, 10_000_000, None, "contract")
    assert by_model["llama-3.1-8b"].metrics_url == "http://127.0.0.1:8001/metrics"


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**8), st.integers(0, 10**8))
def test_cost_is_the_team_rule_without_a_cached_price(inp: int, out: int, pin: int, pout: int) -> None:
    price = Price(pin, pout)
    usage = NormalisedUsage(input=inp, output=out)
    expected = -(-(inp * pin + out * pout) // 1_000_000)
    assert price.cost_micros(usage) == expected == cost_micros(inp, out, price)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_cached_input_never_costs_more_than_full_price(inp: int, cached: int, out: int) -> None:
    full = Price(2_500_000, 10_000_000)
    cheap = Price(2_500_000, 10_000_000, cached_input_per_mtok=1_250_000)
    usage = NormalisedUsage(input=inp, output=out, cached_input=cached)
    assert cheap.cost_micros(usage) <= full.cost_micros(usage)


@given(st.decimals(min_value=0, max_value=1000, places=6))
def test_unit_prices_round_trip_through_micro_units(value: object) -> None:
    from decimal import Decimal

    assert isinstance(value, Decimal)
    assert price_to_micros(value) == int(value * 1_000_000)


def test_per_token_floats_convert_exactly() -> None:
    assert per_token_to_micros_per_mtok(2.5e-06) == 2_500_000
    assert per_token_to_micros_per_mtok(1.5e-07) == 150_000
    assert per_token_to_micros_per_mtok(1.8e-07) == 180_000
