"""What a request holds limits on (its chain's providers and models) and whose flow it is in a fair queue."""

from __future__ import annotations

from datetime import date
from typing import Any

from gateway.catalog import FairShare, InstitutionView, UnitInfo
from providers.build import build_router
from providers.router import Router
from quota import InstitutionSpec, LimitSpec


def _model(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "upstream": "demo-chat", "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2},
            **extra}  # fmt: skip


def _router() -> Router:
    return build_router([
        {"id": "campus", "type": "vllm", "base_url": "http://10.0.0.1:8000/v1",
         "models": [_model("llama", fallbacks=["gpt-4o-mini"], slots=4,
                           queue={"max_wait_seconds": 60, "max_waiting": 10})]},
        {"id": "together", "type": "openai-compatible", "base_url": "http://10.0.0.2:8000/v1",
         "models": [_model("llama")]},
        {"id": "openai", "type": "openai-compatible", "base_url": "http://10.0.0.3:8000/v1",
         "models": [_model("gpt-4o-mini")]},
    ])  # fmt: skip


def test_chain_pairs_name_every_provider_and_model_that_may_serve() -> None:
    router = _router()
    assert router.chain_pairs("llama") == (
        ("campus", "llama"),
        ("together", "llama"),
        ("openai", "gpt-4o-mini"),
    )
    # a unit not allowed the fallback model is never served by it, so holds nothing there
    assert router.chain_pairs("llama", ["llama"]) == (("campus", "llama"), ("together", "llama"))
    assert router.chain_pairs("gpt-4o-mini") == (("openai", "gpt-4o-mini"),)


def test_only_a_model_with_slots_is_queued() -> None:
    router = _router()
    queue = router.model("llama").queue
    assert queue is not None and (queue.provider_id, queue.model_id, queue.slots) == ("campus", "llama", 4)
    assert queue.config.max_wait_seconds == 60 and queue.config.max_waiting == 10
    assert queue.config.retry_after_seconds == 5  # the default
    assert router.model("gpt-4o-mini").queue is None


def _view(spec: InstitutionSpec, fair: FairShare | None = None) -> InstitutionView:
    units = {
        "u": UnitInfo("u", None, "university", "U", (), None),
        "teach": UnitInfo("teach", "u", "teaching", "Teaching", (), None),
        "cs101": UnitInfo("cs101", "teach", "course", "CS101", (), None),
        "lab": UnitInfo("lab", "u", "research", "Lab", (), None),
    }
    return InstitutionView("u", "U", "USD", "UTC", units, spec, _router(), {}, fair or FairShare())


def test_no_limits_no_scopes() -> None:
    """Without a limit or contract anywhere, the engine is handed nothing to check (the zero-cost path)."""
    assert _view(InstitutionSpec(id="u", units=())).limit_scopes("llama", None) == ()
    limited = _view(InstitutionSpec(id="u", units=(), limits={"m:cs101": LimitSpec(rpm=20)}))
    assert limited.limit_scopes("llama", None) == _router().chain_pairs("llama")


def test_flows_go_by_the_nearest_weighted_unit_and_windows_override_weights() -> None:
    fair = FairShare.parse({"weights": {"teaching": "3", "research": 1}, "default_weight": 2,
                            "windows": [{"name": "exams", "from": "2026-12-07", "to": "2026-12-18",
                                         "weights": {"teaching": 9, "cs101": 5}}]})  # fmt: skip
    view = _view(InstitutionSpec(id="u", units=()), fair)
    term = date(2026, 11, 2)
    assert view.flow_of("cs101", term) == ("teach", 3.0)  # by kind, at the nearest unit having a weight
    assert view.flow_of("lab", term) == ("lab", 1.0)
    assert view.flow_of("u", term) == ("*", 2.0)  # nothing weighted on its path
    exams = date(2026, 12, 18)  # both ends included
    assert view.flow_of("cs101", exams) == ("cs101", 5.0)  # the window's id weight is nearer
    assert view.flow_of("teach", exams) == ("teach", 9.0)
    assert view.flow_of("lab", exams) == ("lab", 1.0)  # a window overrides only the keys it lists
    assert view.flow_of("cs101", date(2026, 12, 19)) == ("teach", 3.0)
