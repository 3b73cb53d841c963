"""The unsettled list is a reliable queue: an entry leaves Redis only once its usage event is with the
pipeline, a drainer that dies mid-round loses nothing (its claims are taken again), and a malformed entry
goes to the dead letters instead of blocking the holds behind it."""

from __future__ import annotations

from quota import QuotaEngine, Reservation, UnsettledHold, keys
from tests.quota.test_crash import spec


async def _expired_holds(engine: QuotaEngine, inst: str, n: int) -> list[str]:
    """n holds past their deadline (a zero TTL), billed by a sweep: n entries on the unsettled list."""
    rids = []
    for i in range(n):
        r = await engine.reserve(inst, "lab", f"u{i}", input_tokens=10, max_output_tokens=0, price_in=1_000_000,
                                 price_out=0, min_output_tokens=0, meta=f'{{"r":"req{i}"}}')  # fmt: skip
        assert isinstance(r, Reservation)
        rids.append(r.id)
    assert await engine.sweep(inst) == n
    return rids


async def test_a_malformed_entry_goes_to_the_dead_letters_and_blocks_none_of_the_others(
    private_redis_url: str, inst: str
) -> None:
    engine = QuotaEngine.from_url(private_redis_url, reservation_ttl=0)
    try:
        await engine.compile(spec(inst))
        first = await _expired_holds(engine, inst, 2)
        await engine.redis.rpush(keys.unsettled(inst), "not a record", "r9\nbroken holds\nx\t\n")
        second = await _expired_holds(engine, inst, 2)
        billed: list[UnsettledHold] = []
        poisoned: list[str] = []
        assert (
            await engine.drain_unsettled(
                inst, billed.append, batch=3, on_poison=lambda i, e: poisoned.append(i)
            )
            == 4
        )
        assert [h.reservation_id for h in billed] == first + second
        assert poisoned == [inst, inst]
        assert await engine.redis.lrange(keys.unsettled_dead(inst), 0, -1) == [
            "not a record",
            "r9\nbroken holds\nx\t\n",
        ]
        assert await engine.redis.llen(keys.unsettled(inst)) == 0
        assert await engine.redis.zcard(keys.unsettled_claimed(inst)) == 0  # all acknowledged
    finally:
        await engine.close()


async def test_entries_stay_claimed_until_the_pipeline_has_them_and_a_dead_drainers_claims_come_back(
    private_redis_url: str, inst: str
) -> None:
    """A round whose pipeline does not confirm (the gateway's emit went nowhere durable) leaves its entries
    claimed; once the claim lapses another replica writes them again. The same hold comes back, so the
    event id derived from it is the same: one ledger row (tests/gateway/test_recovery.py proves that end)."""
    engine = QuotaEngine.from_url(private_redis_url, reservation_ttl=0, unsettled_lease=0)
    try:
        await engine.compile(spec(inst))
        rids = await _expired_holds(engine, inst, 3)
        lost: list[UnsettledHold] = []

        async def pipeline_away() -> bool:
            return False

        assert await engine.drain_unsettled(inst, lost.append, handed_over=pipeline_away) == 0
        assert [h.reservation_id for h in lost] == rids
        assert await engine.redis.zcard(keys.unsettled_claimed(inst)) == 3  # not lost: still claimed
        again: list[UnsettledHold] = []
        assert await engine.drain_unsettled(inst, again.append) == 3
        assert again == lost
        assert await engine.redis.zcard(keys.unsettled_claimed(inst)) == 0
        assert await engine.drain_unsettled(inst, again.append) == 0
    finally:
        await engine.close()
