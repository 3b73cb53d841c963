-- Fair queue of one self-hosted model's slots (quota/fairq.py): start-time fair queuing between flows
-- (units), weighted, over a fixed number of slots shared by every gateway. Slots are leases, so a dead
-- gateway's slots come back by themselves; waiters carry their give-up time, so a dead gateway's waiters
-- are skipped. Time comes from Redis (TIME) unless a test passes it.
--
-- KEYS: 1 busy ZSET (rid -> lease deadline ms), 2 q ZSET ("<gw>|<rid>|<give-up ms>" -> start tag),
--       3 s HASH (vt = virtual time: the start tag last granted; f:<flow> = the flow's last finish tag)
-- ARGV: op, slots, lease_ms, now ('-' = Redis TIME), then per op:
--   A rid gw flow weight max_wait_ms max_waiting   -> {'GRANTED'} | {'FULL'} | {'QUEUED', member}
--   P rid                                          -> {'GRANTED'} | {'WAITING'}
--   C rid member keep   keep=1 (gave up): keep a slot granted meanwhile -> {'GRANTED'} | {'GONE'}
--                       keep=0 (done): free the slot                    -> {'FREED'} | {'GONE'}
--   N rid...            renew the leases of slots held                  -> {n renewed}

local BUSY, Q, S = KEYS[1], KEYS[2], KEYS[3]
local FQ_OP = ARGV[1]
local SLOTS = tonumber(ARGV[2])
local LEASE = tonumber(ARGV[3])
local NOW
if ARGV[4] == '-' then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  NOW = tonumber(ARGV[4])
end
local STRIDE = 1000000 -- a flow of weight w advances its tags by STRIDE / w per request

local function prune()
  redis.call('ZREMRANGEBYSCORE', BUSY, '-inf', NOW)
end

local function grant_free()
  -- fill free slots in start-tag order and wake each waiter's gateway
  while redis.call('ZCARD', BUSY) < SLOTS do
    local top = redis.call('ZPOPMIN', Q)
    if #top == 0 then
      redis.call('DEL', S) -- nobody waits: tags restart at 0, no flow keeps credit or debt
      break
    end
    local gw, rid, giveup = string.match(top[1], '^(.*)|([^|]*)|([^|]*)$')
    if gw and tonumber(giveup) > NOW then
      redis.call('ZADD', BUSY, NOW + LEASE, rid)
      redis.call('HSET', S, 'vt', top[2])
      redis.call('PUBLISH', 'eq:fq:gw:' .. gw, BUSY .. ' ' .. rid)
    end -- else the waiter gave up or its gateway died: skip it
  end
end

if FQ_OP == 'A' then
  local rid, gw, flow = ARGV[5], ARGV[6], ARGV[7]
  local weight, max_wait, max_waiting = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
  prune()
  if redis.call('ZCARD', Q) > 0 then grant_free() end
  if redis.call('ZCARD', Q) == 0 and redis.call('ZCARD', BUSY) < SLOTS then
    redis.call('ZADD', BUSY, NOW + LEASE, rid)
    return {'GRANTED'}
  end
  if redis.call('ZCARD', Q) >= max_waiting then return {'FULL'} end
  local vt = tonumber(redis.call('HGET', S, 'vt') or '0')
  local fin = tonumber(redis.call('HGET', S, 'f:' .. flow) or '0')
  local start = math.max(vt, fin)
  redis.call('HSET', S, 'f:' .. flow, string.format('%d', start + math.floor(STRIDE / weight)))
  local member = gw .. '|' .. rid .. '|' .. string.format('%d', NOW + max_wait)
  redis.call('ZADD', Q, start, member)
  return {'QUEUED', member}
elseif FQ_OP == 'P' then
  prune()
  grant_free()
  if redis.call('ZSCORE', BUSY, ARGV[5]) then return {'GRANTED'} end
  return {'WAITING'}
elseif FQ_OP == 'C' then
  local rid, member, keep = ARGV[5], ARGV[6], ARGV[7]
  redis.call('ZREM', Q, member)
  local out = {'GONE'}
  if keep == '1' then
    if redis.call('ZSCORE', BUSY, rid) then out = {'GRANTED'} end
  elseif redis.call('ZREM', BUSY, rid) == 1 then
    out = {'FREED'}
  end
  prune()
  grant_free()
  return out
elseif FQ_OP == 'N' then
  local n = 0
  for i = 5, #ARGV do
    n = n + redis.call('ZADD', BUSY, 'XX', 'CH', NOW + LEASE, ARGV[i])
  end
  return {n}
end
return redis.error_reply('fairq: unknown op ' .. tostring(FQ_OP))
