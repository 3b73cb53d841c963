"""Kafka connection settings and the topic, shared by the producer, the consumer and the benchmark.

kafka-python is the client (aiokafka's idempotent producer fails on tansu). Every
client gets the same security settings so a production cluster with SASL needs
only `EDUAIQ_KAFKA_*` variables.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 6


def client_config(settings: Settings, *, bootstrap_timeout_ms: int = 5000) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
        "bootstrap_timeout_ms": bootstrap_timeout_ms,
        "reconnect_backoff_max_ms": 2000,
    }
    if settings.kafka_sasl_mechanism:
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        cfg["sasl_plain_password"] = settings.kafka_sasl_password
    return cfg


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def ensure_topic(
    settings: Settings,
    topic: str | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    bootstrap_timeout_ms: int = 5000,
) -> None:
    """Create the topic with several partitions when missing, so consumers can share the load.

    Auto-created topics get the broker's default partition count (often 1), which
    would pin the whole ledger to one consumer.
    """
    name = topic or settings.kafka_topic
    admin = KafkaAdminClient(**client_config(settings, bootstrap_timeout_ms=bootstrap_timeout_ms))
    try:
        if name in set(admin.list_topics()):
            return
        try:
            # -1: the cluster's default replication factor (1 on a laptop broker, 3 on a real cluster).
            admin.create_topics([NewTopic(name, partitions, -1)])
            log.info("created topic %s with %d partitions", name, partitions)
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()


def abandon(producer: KafkaProducer) -> None:
    """Drop a producer and whatever it still holds (its caller keeps them elsewhere or sends them again).

    kafka-python's `close(timeout=0)` first flushes and raises when records are pending,
    leaving its I/O thread running and retrying forever; force-closing the sender is the
    only way to stop it.
    """
    try:
        producer.close(timeout=0)
    except KafkaError:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True
