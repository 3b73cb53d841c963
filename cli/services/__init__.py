"""Embedded real servers (PostgreSQL, Redis, a Kafka-protocol broker) for the quick start and the tests.

They are the same servers production uses, started from wheels on loopback so a
fresh machine needs no Docker and no manual installs. Production points the
`EDUAIQ_*` URLs at managed services and never starts these.
"""
