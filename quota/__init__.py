"""EduAiQ budget engine: hierarchical budgets with reservations, on Redis.

Public API for the gateway and the admin side (everything else is internal)::

    from quota import QuotaEngine, Reservation, Refusal, Settlement, Charge

    engine = QuotaEngine.from_url(settings.redis_url,
                                  reservation_ttl=settings.reservation_ttl_seconds,
                                  min_output_tokens=settings.min_clamp_tokens,
                                  loader=load_spec_and_charges)   # optional, see below

    # request path: one atomic script step each (operations issued in the same event-loop
    # turn share one EVALSHA per institution: quota/batching.py)
    r = await engine.reserve(institution, unit, user,
                             input_tokens=prompt_upper_bound, max_output_tokens=max_tokens,
                             price_in=model.input_per_mtok, price_out=model.output_per_mtok,
                             request_id=req_id)          # -> Reservation | Refusal
    if isinstance(r, Refusal):   # 429: r.binding_name, r.metric, r.needed, r.available, r.resets_at
        ...
    # send r.output_tokens as max_tokens; header when r.clamped
    s = await engine.settle(r, input_tokens=usage.prompt, output_tokens=usage.completion)
    # -> Settlement: s.charge (a Charge for the usage event / ledger), s.overage per metric
    await engine.release(r)      # upstream failed before producing anything

    # background tasks, one each per replica
    asyncio.create_task(engine.run_sweeper())           # releases holds of crashed replicas
    asyncio.create_task(engine.listen_invalidations())  # drops cached snapshots on edits

    # control plane
    await engine.compile(spec)                     # whole institution (import, bootstrap)
    await engine.compile(spec, changed=["cs101"])  # an edit: that unit's subtree only
    explanation = await engine.explain(institution, unit, user)   # dashboard / 429 details
    await engine.rebuild(spec, recompute_counters(ledger_charges), force=True)
    drifts = await engine.drift(institution, recompute_counters(ledger_charges))
    await engine.is_compiled(institution)          # cheap "Redis lost its data?" check
    up, reserved, extras_used = await engine.redis_counters(institution)  # raw counters
    await engine.sweep(institution); await engine.prune(institution)     # upkeep, by hand
    await engine.close()                           # also closes the Redis client it was given

``loader(institution) -> (InstitutionSpec, Iterable[Charge])`` is an async
callable the lead wires to PostgreSQL: when a reserve finds Redis emptied
(no compile token), the engine calls it, rebuilds once and retries. Without a
loader it raises :class:`InstitutionNotLoaded` instead.

Modules: ``model`` (plain dataclasses of the tree), ``caps`` (resolve
percent/inherit/fair share), ``periods`` (windows in the institution's zone),
``waterfall`` (the reference model of spec sections 5-6, pure), ``lua/``
(the same rules as Redis scripts), ``compile`` (tree -> Redis + pub/sub),
``snapshot`` (per-process compiled view and prepared paths), ``batching`` and
``resp`` (auto-pipelined transport), ``keys`` (every Redis name), ``results``
(what the engine returns), ``engine`` (the Redis adapter), ``explain``,
``rebuild`` (ledger -> counters, drift), ``jobs`` (scheduler hooks), ``bench``
(``python -m quota.bench``); ``sources`` (PostgreSQL -> specs and charges) is
the lead's. The choices made where the spec is silent: ``quota/SEMANTICS.md``.
"""

from quota import keys
from quota.engine import InstitutionNotLoaded, Loader, QuotaEngine
from quota.explain import Explanation, ExtraReport, MetricReport, NodeReport
from quota.model import (
    ContractSpec,
    ExtraSpec,
    InstitutionSpec,
    LimitSpec,
    MemberCap,
    Metric,
    Period,
    Rule,
    Semester,
    SpecError,
    UnitSpec,
    spec_from_org,
)
from quota.rebuild import CounterValues, Drift, recompute_counters
from quota.results import (
    Charge,
    LimitRefusal,
    RateInfo,
    Refusal,
    Remaining,
    Reservation,
    Settlement,
    UnsettledHold,
)

__all__ = [
    "Charge",
    "ContractSpec",
    "CounterValues",
    "Drift",
    "Explanation",
    "ExtraReport",
    "ExtraSpec",
    "InstitutionNotLoaded",
    "InstitutionSpec",
    "LimitRefusal",
    "LimitSpec",
    "Loader",
    "MemberCap",
    "Metric",
    "MetricReport",
    "NodeReport",
    "Period",
    "QuotaEngine",
    "RateInfo",
    "Refusal",
    "Remaining",
    "Reservation",
    "Rule",
    "Semester",
    "Settlement",
    "SpecError",
    "UnitSpec",
    "UnsettledHold",
    "keys",
    "recompute_counters",
    "spec_from_org",
]
