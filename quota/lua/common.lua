-- Shared by every EduAiQ quota script (quota/scripts.py puts it in front of each one): the
-- rules of quota/waterfall.py with the same function names (read that module's docstring
-- for the definitions) and the codecs of the stored values. Lua numbers are doubles: callers keep every
-- amount below 2^53, and numbers are written with string.format('%d') so they stay exact.
-- "Unlimited" is `false` (Lua arrays cannot hold nil).
--
-- Stored values (see quota/keys.py): a cfg cap field holds "<cost cap> <tokens cap>" with '-'
-- for inherit; a counter field (one per node per period hash, one per extra in the extras
-- hash) holds "<cost up> <cost reserved> <tokens up> <tokens reserved>".

local MICRO = 1000000
local EMPTY = {}

local function minr(a, b)
  if a == false then return b end
  if b == false then return a end
  if a <= b then return a end
  return b
end

local function floor_div(v, d)
  -- exact floor(v / d) for integers |v| < 2^53, d > 0 (float division may be off by one)
  local q = math.floor(v / d)
  if q * d > v then q = q - 1 end
  if (q + 1) * d <= v then q = q + 1 end
  return q
end

local function cost_of(tin, n, pin, pout)
  return -floor_div(-(tin * pin + n * pout), MICRO)
end

-- "<c> <t>" -> c, t (numbers or false)
local function caps_of(v)
  if not v then return false, false end
  local c, t = string.match(v, '^(%S+) (%S+)$')
  return tonumber(c) or false, tonumber(t) or false
end

-- "<cu> <cr> <tu> <tr>" -> four numbers (0 when absent)
local function counters_of(v)
  if not v then return 0, 0, 0, 0 end
  local a, b, c, d = string.match(v, '^(%-?%d+) (%-?%d+) (%-?%d+) (%-?%d+)$')
  return tonumber(a), tonumber(b), tonumber(c), tonumber(d)
end

local function pack4(a, b, c, d)
  return string.format('%d %d %d %d', a, b, c, d)
end

-- The waterfall for `amount` (false: as much as possible) over nodes 1..k.
-- rooms[i]: number or false; extras[j]: array of {id, room}. Returns allocation,
-- taken extras as {id, j (1-based), x}, and the total funded.
local function plan(amount, rooms, extras, k)
  local a = amount
  for i = 1, k do a = minr(a, rooms[i]) end
  local remaining = false
  if amount ~= false then remaining = amount - a end
  local taken = EMPTY
  local funded = a
  if remaining == 0 or extras == false then return a, taken, funded end
  taken = {}
  local prefix = false
  for j = 1, k do
    if remaining == 0 then break end
    local xs = extras[j]
    for q = 1, #xs do
      if remaining == 0 or prefix == 0 then break end
      local x = minr(minr(remaining, xs[q][2]), prefix)
      if x > 0 then
        taken[#taken + 1] = {xs[q][1], j, x}
        funded = funded + x
        if remaining ~= false then remaining = remaining - x end
        if prefix ~= false then prefix = prefix - x end
      end
    end
    local r = rooms[j]
    if r ~= false then prefix = minr(prefix, r - a) end
  end
  return a, taken, funded
end

local function capacity(rooms, extras, k)
  local any = false
  for i = 1, k do
    if rooms[i] ~= false then any = true break end
  end
  if not any then return false end
  local _, _, funded = plan(false, rooms, extras, k)
  return funded
end

local function binding(amount, rooms, extras, k)
  for i = 1, k do
    local _, _, funded = plan(amount, rooms, extras, i)
    if funded < amount then return i end
  end
  return k
end

-- Lowest node whose prefix capacity is already the whole path's; false when uncapped.
local function limiting(rooms, extras, k)
  local total = capacity(rooms, extras, k)
  if total == false then return false, false end
  if extras == false then
    -- without extras a prefix's capacity is its smallest room: the lowest argmin
    local best, at = false, k
    for i = 1, k do
      local r = rooms[i]
      if r ~= false and (best == false or r < best) then best, at = r, i end
    end
    return at, total
  end
  for i = 1, k do
    local c = capacity(rooms, extras, i)
    if c ~= false and c <= total then return i, total end
  end
  return k, total
end

-- HSET / HDEL with argument lists longer than Lua's unpack() allows.
local function chunked(cmd, key, list, step)
  local i = 1
  while i <= #list do
    local last = math.min(i + step - 1, #list)
    redis.call(cmd, key, unpack(list, i, last))
    i = last + 1
  end
end

-- HMGET with field lists longer than unpack() allows; returns one flat list.
local function hmget(key, fields)
  local out = {}
  local i = 1
  while i <= #fields do
    local last = math.min(i + 999, #fields)
    local v = redis.call('HMGET', key, unpack(fields, i, last))
    for q = 1, #v do out[#out + 1] = v[q] end
    i = last + 1
  end
  return out
end
