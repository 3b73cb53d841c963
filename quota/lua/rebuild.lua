-- Put Redis back in line with the ledger (PostgreSQL is the truth) in one atomic step:
-- compiled caps, and every spend counter (up, extras used) set to the recomputed values.
-- Holds of reservations in flight (the reserved parts) are kept: the ledger knows only
-- settled charges. Without force, nothing is done when the institution is already compiled,
-- so replicas that all found Redis empty rebuild once, not once each over each other's work.
-- KEYS: 1 cfg, 2 extras counters, 3 registry, 4.. every counter hash (registered or new).
-- ARGV: 1 force '0'|'1', 2 token, 3 snapshot JSON, 4 number of cfg fields, pairs...,
--       then per KEYS[4..]: number of triples, (node, cost up, tokens up)...;
--       then number of extras triples, (extra, cost used, tokens used)...
-- Reply: 'OK' | 'EXISTS' | 'RETRY' (a counter hash appeared that was not declared).
if ARGV[1] ~= '1' and redis.call('HEXISTS', KEYS[1], 'ver') == 1 then return 'EXISTS' end
local declared = {}
for i = 4, #KEYS do declared[KEYS[i]] = true end
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not declared[k] then return 'RETRY' end
end

-- Rewrite one counters hash: spend from the triples at ARGV[pos..], holds as they are.
local function rewrite(key, pos, marker)
  local held = {}
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if all[i] ~= '_' then
      local _, rc, _, rt = counters_of(all[i + 1])
      held[all[i]] = {rc, rt}
    end
  end
  local spend = {}
  local n = tonumber(ARGV[pos])
  for q = 0, n - 1 do
    local at = pos + 1 + 3 * q
    spend[ARGV[at]] = {tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])}
  end
  local set = {}
  if marker then
    set[1] = '_'
    set[2] = '1'
  end
  for f, h in pairs(held) do
    local s = spend[f] or {0, 0}
    set[#set + 1] = f
    set[#set + 1] = pack4(s[1], h[1], s[2], h[2])
  end
  for f, s in pairs(spend) do
    if not held[f] then
      set[#set + 1] = f
      set[#set + 1] = pack4(s[1], 0, s[2], 0)
    end
  end
  redis.call('DEL', key)
  chunked('HSET', key, set, 1000)
  return pos + 1 + 3 * n
end

local pos = 4
local n = tonumber(ARGV[pos])
local cfg = {}
for i = 1, 2 * n do cfg[i] = ARGV[pos + i] end
pos = pos + 2 * n + 1
for i = 4, #KEYS do
  pos = rewrite(KEYS[i], pos, true)
  redis.call('SADD', KEYS[3], KEYS[i])
end
rewrite(KEYS[2], pos, false)

redis.call('DEL', KEYS[1])
chunked('HSET', KEYS[1], cfg, 1000)
redis.call('HSET', KEYS[1], 'ver', ARGV[2], 'snap', ARGV[3])
return 'OK'
