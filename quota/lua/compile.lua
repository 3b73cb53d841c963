-- Install compiled caps for an institution and a new compile token, atomically, so every
-- replica's next reserve either sees all of an edit or none of it (a stale token makes the
-- reserve answer STALE and the caller re-reads the snapshot).
-- KEYS: 1 cfg. ARGV: 1 token, 2 snapshot JSON, 3 'full' (replace everything) | 'partial', either
--       followed by '-existing' (only over a compiled institution, else 'NOINST' and nothing written),
--       4 number of fields to set, field/value pairs..., then number to delete, fields...
local mode = ARGV[3]
if string.sub(mode, -9) == '-existing' then
  if redis.call('HEXISTS', KEYS[1], 'ver') == 0 then return 'NOINST' end
  mode = string.sub(mode, 1, -10)
end
if mode == 'full' then redis.call('DEL', KEYS[1]) end
local n = tonumber(ARGV[4])
local pos = 5
local set = {}
for i = 0, 2 * n - 1 do set[#set + 1] = ARGV[pos + i] end
pos = pos + 2 * n
local d = tonumber(ARGV[pos])
local del = {}
for i = 1, d do del[#del + 1] = ARGV[pos + i] end
chunked('HDEL', KEYS[1], del, 1000)
chunked('HSET', KEYS[1], set, 1000)
redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'snap', ARGV[2])
return 'OK'
