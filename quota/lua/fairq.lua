-- Fair queue of one self-hosted model's slots (quota/fairq.py): start-time fair queuing between flows
-- (units), weighted, over a fixed number of slots shared by every gateway. Slots are leases, so a dead
-- gateway's slots come back by themselves; waiters carry their give-up time, so a dead gateway's waiters
-- are skipped. Time comes from Redis (TIME) unless a test passes it.
--
-- KEYS: 1 busy ZSET (rid -> lease deadline ms),
--       2 q ZSET ("<gw>|<rid>|<give-up ms>|<stride>|<flow>" -> start tag),
--       3 s HASH (vt = virtual time: the start tag last granted; f:<flow> = the flow's last finish tag;
--                 n:<flow> = the flow's places in q)
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

-- A member's parts; a member queued by the previous release ("<gw>|<rid>|<give-up ms>") has no flow.
local function parse(member)
  local gw, rid, giveup, stride, flow = string.match(member, '^([^|]*)|([^|]*)|(%d+)|(%d+)|(.*)$')
  if gw then return gw, rid, tonumber(giveup), tonumber(stride), flow end
  gw, rid, giveup = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
  return gw, rid, tonumber(giveup), 0, false
end

-- A waiter of `flow` left q: its place is free again. One that was not served (gave up, hung up, or its
-- gateway died) also gives its stride back, so abandoned requests do not push the rest of its unit
-- back; the flow's later waiters keep their tags.
local function left(flow, stride, served)
  if not flow then return end
  redis.call('HINCRBY', S, 'n:' .. flow, -1)
  if not served then
    local f = tonumber(redis.call('HGET', S, 'f:' .. flow) or '0')
    redis.call('HSET', S, 'f:' .. flow, string.format('%d', math.max(0, f - stride)))
  end
end

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
    local gw, rid, giveup, stride, flow = parse(top[1])
    local served = gw and giveup and giveup > NOW
    if served then
      redis.call('ZADD', BUSY, NOW + LEASE, rid)
      redis.call('HSET', S, 'vt', top[2])
      redis.call('PUBLISH', 'eq:fq:gw:' .. gw, BUSY .. ' ' .. rid)
    end -- else the waiter gave up or its gateway died: skip it
    left(flow, stride, served)
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
  -- one flow holds at most max_waiting - floor(max_waiting / 10) places: the rest stay for other units
  local mine = tonumber(redis.call('HGET', S, 'n:' .. flow) or '0')
  if mine > 0 and mine >= max_waiting - math.floor(max_waiting / 10) then return {'FULL'} end
  local vt = tonumber(redis.call('HGET', S, 'vt') or '0')
  local fin = tonumber(redis.call('HGET', S, 'f:' .. flow) or '0')
  local start = math.max(vt, fin)
  local stride = math.floor(STRIDE / weight)
  redis.call('HSET', S, 'f:' .. flow, string.format('%d', start + stride))
  redis.call('HINCRBY', S, 'n:' .. flow, 1)
  local member = gw .. '|' .. rid .. '|' .. string.format('%d|%d|', NOW + max_wait, stride) .. flow
  redis.call('ZADD', Q, start, member)
  return {'QUEUED', member}
elseif FQ_OP == 'P' then
  prune()
  grant_free()
  if redis.call('ZSCORE', BUSY, ARGV[5]) then return {'GRANTED'} end
  return {'WAITING'}
elseif FQ_OP == 'C' then
  local rid, member, keep = ARGV[5], ARGV[6], ARGV[7]
  if redis.call('ZREM', Q, member) == 1 then
    local _, _, _, stride, flow = parse(member)
    left(flow, stride, false)
  end
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
