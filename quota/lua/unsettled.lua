-- Claim entries of the unsettled list for one drain round (QuotaEngine.drain_unsettled).
-- A claimed entry is not removed: it moves to the claimed set, scored by the end of its claim (Redis's
-- clock), and leaves it only when the claimer has handed its usage event to the pipeline (ZREM, the
-- ack) or dead-lettered it. A claim older than its lease (the claimer died, or its pipeline stayed
-- away) is taken again first, so an entry is lost by no crash; a repeated hand-over writes the same
-- event id, which the ledger keeps once.
-- KEYS: 1 the unsettled list, 2 the claimed set. ARGV: 1 how many entries at most, 2 lease (ms).
-- Reply: the claimed entries.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
if #out < n then
  local popped = redis.call('LPOP', KEYS[1], n - #out)
  if popped then
    for _, e in ipairs(popped) do out[#out + 1] = e end
  end
end
local until_ms = string.format('%d', now + tonumber(ARGV[2]))
local z = {}
for _, e in ipairs(out) do
  z[#z + 1] = until_ms
  z[#z + 1] = e
end
chunked('ZADD', KEYS[2], z, 1000)
return out
