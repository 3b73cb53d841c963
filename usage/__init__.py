"""The usage pipeline: from a settled request to the ledger, reports, forecasts and ERP exports.

    gateway --emit--> producer (thread; SQLite spool when Kafka is away) --Kafka, keyed by institution-->
    consumer group --one transaction per batch--> usage_event + usage_rollup (PostgreSQL) --> reports,
    forecasts, exports; Celery jobs keep rollups compact, freeze month-end exports and cache forecasts.

Modules, one job each:
- events:       the versioned event schema (JSON on the wire) and the purpose rule.
- kafka_client: connection settings and topic creation shared by every Kafka client.
- spool:        the durable local queue (SQLite, fsync per batch).
- producer:     `UsageProducer.emit`, off the request path; spooling and ordered replay.
- ledger:       insert-if-new and rollups for one batch, in the caller's transaction.
- consumer:     `run_consumer`, the Kafka -> PostgreSQL loop (retries, dead letters, offsets after commit).
- periods:      billing months in the institution's time zone.
- reports:      async queries for the admin API (breakdowns, top users, caps, forecasts).
- forecast:     the burn-rate model, its band and its backtest (pure).
- chargeback:   who pays for what: lines per unit, model and cost object.
- focus, export: the CSV / JSON / FinOps FOCUS files, frozen once a month closes.
- jobs:         the Celery app, its tasks, beat schedule and quota hooks.
- bench:        `python -m usage.bench`, throughput and delay end to end.
"""
