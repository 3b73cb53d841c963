-- The hot path: reserve, settle, release and expire operations of ONE institution, applied in
-- order inside one script. Each operation is exactly what its own script call would do (the
-- batch is atomic as a whole, which is stronger still); batching only shares the reads and
-- writes of the nodes several operations touch (a course's requests share six of seven).
--
-- KEYS: 1 cfg, 2 deadlines, 3 expired, 4 extras counters, 5 registry, 6 records, 7 unsettled,
--       8 settle replies, 9 their times, 10.. the counter hash of every period key the operations name
--       (all declared).
-- ARGV: the unit paths of the batch, each once (many requests share one course's path):
--   number of paths, then each: K (nodes, the member's included), the member nodes' cfg cap
--   field and period key, then per unit node (unit first, root last): node id, cfg cap field,
--   period key, number of eligible extras, their ids in spend order.
-- Then the number of operations, and each operation:
--   'R' token deadline reservation_id input_tokens max_output price_in price_out min_output
--       META PATH MEMBER                   (META: the request's usage-event skeleton, kept in the
--                                           record so an expired hold can still be billed)
--   'S' reservation_id actual_cost actual_tokens PATH MEMBER  (the path it was reserved on)
--   'L' reservation_id                                         (release: undo the holds)
--   'X' reservation_id now                                     (expire, if deadline <= now)
--   'N' reservation_id deadline                                (renew: move a live hold's deadline)
-- Times (deadline, now) are '+<ms>': Redis's clock plus that many ms, so that deadlines and the sweep
-- follow one clock however the replicas' clocks disagree; or absolute epoch ms (a test's simulated clock).
-- PATH: the index of a path above; MEMBER: the member node's id, member(user,unit).
-- Reply: one reply per operation, in order:
--   R: {'OK', output tokens, clamped 0/1, cost held, tokens held, limiting node or -1, room left
--       or -1 (cost), the same two for tokens, deadline (epoch ms)} | {'REFUSED', metric, binding node, needed,
--       available} | {'STALE', current token} | {'NOINST'}
--   S: {'OK', then for cost and tokens: allocation, funded, n, (extra, j, amount)*n}
--      | {'LATE'} | {'GONE'}   -- LATE: expiry already billed the hold; GONE: unknown, nothing charged
--      A settle's reply (OK or LATE) is kept for its reservation id (KEYS[8], times in KEYS[9], pruned by
--      the sweeper after `settled_retention`): a settle repeated because the reply was lost (the connection
--      dropped after the script ran) gets the same reply and charges nothing again.
--   L: {'RELEASED'} | {'EXPIRED'} | {'GONE'}        X: {'EXPIRED'} | {'SKIP'}
--   N: {'RENEWED'} | {'GONE'}
--
-- Expiry bills the hold. A hold outlives its deadline only when its gateway died or could not reach
-- Redis for a whole TTL (live requests renew theirs), so nobody can report the real usage: the hold,
-- an upper bound that by construction fits every cap, becomes spend, and the record goes to the
-- unsettled list (KEYS[7]) from which a gateway's sweeper writes its usage event (status
-- 'unsettled'). A settle that arrives after that charges nothing more ('LATE': the hold paid).
--
-- Settle: undo the holds, then charge the actual amount by the waterfall. What cannot be funded
-- (the provider overran the granted output, a cap was lowered meanwhile, the hold had expired
-- and its room was taken) is charged to no counter and returned as overage: caps are never
-- exceeded, and the ledger still records the whole usage.

local CFG, DL, XP, XC, PK, RS, UN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local SR, ST = KEYS[8], KEYS[9]

-- Redis's own clock (ms), read once per batch when an operation needs it: one clock for every replica.
local TNOW_MS = false
local function tnow()
  if not TNOW_MS then
    local t = redis.call('TIME')
    TNOW_MS = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return TNOW_MS
end

local function at_ms(v)
  if string.sub(v, 1, 1) == '+' then return tnow() + tonumber(string.sub(v, 2)) end
  return tonumber(v)
end
local KPFX = string.sub(CFG, 1, -4) .. 'k:' -- 'eq:{I}:cfg' -> 'eq:{I}:k:'

-- ---- parse ------------------------------------------------------------------------------
-- A path: k nodes; node 1 is the member node, whose id each operation brings (p.member);
-- p.snid[i] holds the ids of the unit nodes (i >= 2). nid_of(p, i) reads either.
local PATHS = {}
local pos = 2
for q = 1, tonumber(ARGV[1]) do
  local k = tonumber(ARGV[pos])
  local nid, cref, pkey, xs, xids = {false}, {ARGV[pos + 1]}, {ARGV[pos + 2]}, {EMPTY}, EMPTY
  pos = pos + 3
  for i = 2, k do
    nid[i], cref[i], pkey[i] = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
    local nx = tonumber(ARGV[pos + 3])
    pos = pos + 4
    if nx == 0 then
      xs[i] = EMPTY
    else
      if xids == EMPTY then xids = {} end
      local l = {}
      for n = 1, nx do
        l[n] = ARGV[pos]
        xids[#xids + 1] = ARGV[pos]
        pos = pos + 1
      end
      xs[i] = l
    end
  end
  PATHS[q] = {k = k, snid = nid, cref = cref, pkey = pkey, xs = xs, xids = xids}
end

local function nid_of(p, i)
  if i == 1 then return p.member end
  return p.snid[i]
end

local function op_path(index, member)
  local sp = PATHS[tonumber(index)]
  return {k = sp.k, snid = sp.snid, cref = sp.cref, pkey = sp.pkey, xs = sp.xs, xids = sp.xids, member = member,
          shared = sp}
end

-- LIM := NL [NOW LEASE_MS (KEY RPM TPM CC){NL}] NC [(NODE PKEY CEIL){NC}]  ('-' = none). Returns the
-- position of the argument after it. With no limits ('0' '0') this is two tonumber calls.
local function parse_limits(op, at)
  local nl = tonumber(ARGV[at])
  at = at + 1
  if nl > 0 then
    op.lnow, op.lease = ARGV[at], tonumber(ARGV[at + 1])
    at = at + 2
    local l = {}
    for i = 1, nl do
      l[i] = {key = ARGV[at], rpm = tonumber(ARGV[at + 1]) or false, tpm = tonumber(ARGV[at + 2]) or false,
              cc = tonumber(ARGV[at + 3]) or false}
      at = at + 4
    end
    op.lims = l
  end
  local nc = tonumber(ARGV[at])
  at = at + 1
  if nc > 0 then
    local l = {}
    for j = 1, nc do
      l[j] = {node = ARGV[at], pkey = ARGV[at + 1], ceil = tonumber(ARGV[at + 2])}
      at = at + 3
    end
    op.cons = l
  end
  return at
end

local ops = {}
for o = 1, tonumber(ARGV[pos]) do
  pos = pos + 1
  local t = ARGV[pos]
  local op = {t = t}
  if t == 'R' then
    op.token, op.deadline, op.rid = ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
    op.tin, op.nout = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
    op.pin, op.pout, op.nmin = tonumber(ARGV[pos + 6]), tonumber(ARGV[pos + 7]), tonumber(ARGV[pos + 8])
    op.meta = ARGV[pos + 9]
    pos = parse_limits(op, pos + 10)
    op.p = op_path(ARGV[pos], ARGV[pos + 1])
    pos = pos + 1
  elseif t == 'S' then
    op.rid, op.cost, op.tokens = ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
    op.served, op.lnow = ARGV[pos + 4], ARGV[pos + 5]
    op.p = op_path(ARGV[pos + 6], ARGV[pos + 7])
    pos = pos + 7
  elseif t == 'L' then
    op.rid, op.lnow = ARGV[pos + 1], ARGV[pos + 2]
    pos = pos + 2
  elseif t == 'X' then
    op.rid, op.now = ARGV[pos + 1], at_ms(ARGV[pos + 2])
    pos = pos + 2
  elseif t == 'N' then
    op.rid, op.deadline, op.lease_at = ARGV[pos + 1], at_ms(ARGV[pos + 2]), ARGV[pos + 3]
    pos = pos + 3
  else
    return redis.error_reply('ERR quota ops: unknown operation ' .. tostring(t))
  end
  ops[o] = op
end

-- ---- records: line 1 the holds, line 2 the path, line 3 the event skeleton -----------------
-- Line 1: "<cost alloc> <n> (<extra> <j> <x>)*n <tokens alloc> <n> ..." (j 1-based);
-- line 2: "<period key>\t<node id>" per node, tab-separated, member first;
-- line 3: META as the gateway sent it (JSON: no raw newline), possibly empty.
local function encode_record(p, plans, meta)
  local out = {}
  for mi = 1, 2 do
    local a, taken = plans[mi][1], plans[mi][2]
    out[#out + 1] = string.format('%d %d', a, #taken)
    for q = 1, #taken do
      out[#out + 1] = string.format('%s %d %d', taken[q][1], taken[q][2], taken[q][3])
    end
  end
  local tail = p.shared.tail
  if not tail then -- the unit nodes' part is the same for every request on this path
    local path = {}
    for i = 2, p.k do
      path[#path + 1] = p.pkey[i]
      path[#path + 1] = p.snid[i]
    end
    tail = '\t' .. table.concat(path, '\t')
    p.shared.tail = tail
  end
  return table.concat(out, ' ') .. '\n' .. p.pkey[1] .. '\t' .. p.member .. tail .. '\n' .. meta
end

local function decode_holds(rec)
  local tok = {}
  for w in string.gmatch(string.match(rec, '^([^\n]*)'), '%S+') do tok[#tok + 1] = w end
  local at, out = 1, {}
  for mi = 1, 2 do
    local a, n = tonumber(tok[at]), tonumber(tok[at + 1])
    at = at + 2
    local taken = {}
    for q = 1, n do
      taken[q] = {tok[at], tonumber(tok[at + 1]), tonumber(tok[at + 2])}
      at = at + 3
    end
    out[mi] = {a, taken}
  end
  return out
end

local function decode_path(rec)
  local parts = {}
  for w in string.gmatch(string.match(rec, '\n([^\n]*)'), '[^\t]+') do parts[#parts + 1] = w end
  local p = {k = 0, snid = {}, pkey = {}}
  for i = 1, #parts, 2 do
    p.k = p.k + 1
    p.pkey[p.k], p.snid[p.k] = parts[i], parts[i + 1]
  end
  p.member = p.snid[1]
  return p
end

-- ---- preload everything the operations touch, one read per hash ---------------------------
local rids = {}
for o = 1, #ops do
  if ops[o].t ~= 'R' then rids[#rids + 1] = ops[o].rid end
end
local REC, INXP, SCORE = {}, {}, {}
if #rids > 0 then
  local v = hmget(RS, rids)
  local x = redis.call('ZMSCORE', XP, unpack(rids))
  local d = redis.call('ZMSCORE', DL, unpack(rids))
  for q = 1, #rids do
    REC[rids[q]] = v[q]
    INXP[rids[q]] = x[q] and true or false
    if d[q] then SCORE[rids[q]] = tonumber(d[q]) end
  end
end

-- Settles of reservations whose record is gone: a reply kept from an earlier settle of the same id?
local SRV = {}
do
  local gone = {}
  for o = 1, #ops do
    if ops[o].t == 'S' and not REC[ops[o].rid] then gone[#gone + 1] = ops[o].rid end
  end
  if #gone > 0 then
    local v = hmget(SR, gone)
    for q = 1, #gone do
      if v[q] then SRV[gone[q]] = v[q] end
    end
  end
end

local needset, needlist, needx, needc = {}, {}, {}, {}
local pkeys, xlist, clist = {}, {}, {'ver'}
local function want(pkey, nid)
  local s = needset[pkey]
  if not s then
    s = {}
    needset[pkey] = s
    needlist[pkey] = {}
    pkeys[#pkeys + 1] = pkey
  end
  if not s[nid] then
    s[nid] = true
    local l = needlist[pkey]
    l[#l + 1] = nid
  end
end
local function wantx(e)
  if not needx[e] then
    needx[e] = true
    xlist[#xlist + 1] = e
  end
end
local function wantc(f)
  if not needc[f] then
    needc[f] = true
    clist[#clist + 1] = f
  end
end
for q = 1, #PATHS do
  local p = PATHS[q]
  wantc(p.cref[1])
  for i = 2, p.k do
    want(p.pkey[i], p.snid[i])
    wantc(p.cref[i])
  end
  for n = 1, #p.xids do
    wantx(p.xids[n])
    wantc('$' .. p.xids[n])
  end
end
for o = 1, #ops do
  local op = ops[o]
  local p = op.p
  if p then
    want(p.pkey[1], p.member)
  elseif REC[op.rid] and op.t ~= 'N' then
    op.rp = decode_path(REC[op.rid])
    op.holds = decode_holds(REC[op.rid])
    for i = 1, op.rp.k do want(op.rp.pkey[i], nid_of(op.rp, i)) end
    for mi = 1, 2 do
      for _, tk in ipairs(op.holds[mi][2]) do wantx(tk[1]) end
    end
  end
end

local cv = hmget(CFG, clist)
local VER = cv[1]
local CAPS = {}
for q = 2, #clist do
  local c, t = caps_of(cv[q])
  CAPS[clist[q]] = {c, t}
end

local C, FRESH = {}, {}
for _, pkey in ipairs(pkeys) do
  local list = needlist[pkey]
  local f = {'_'}
  for q = 1, #list do f[q + 1] = list[q] end
  local v = hmget(KPFX .. pkey, f)
  FRESH[pkey] = not v[1]
  local cells = {}
  for q = 1, #list do
    local a, b, c, d = counters_of(v[q + 1])
    cells[list[q]] = {a, b, c, d}
  end
  C[pkey] = cells
end

local X = {}
if #xlist > 0 then
  local v = hmget(XC, xlist)
  for q = 1, #xlist do
    local a, b, c, d = counters_of(v[q])
    X[xlist[q]] = {a, b, c, d}
  end
end

local DIRTY, DIRTYX = {}, {}
local function attach(p)
  -- p.cell[i]: the in-memory counters of node i (4 numbers), shared by every op touching it
  p.cell = {}
  for i = 1, p.k do p.cell[i] = C[p.pkey[i]][nid_of(p, i)] end
end
for o = 1, #ops do
  if ops[o].p then attach(ops[o].p) end
  if ops[o].rp then attach(ops[o].rp) end
end

-- ---- the rules on the in-memory state -----------------------------------------------------
-- metric index mi: 1 cost, 2 tokens; a cell is {cost up, cost res, tokens up, tokens res}.
local function rooms_of(p, mi)
  local rooms = {}
  local u, r = 2 * mi - 1, 2 * mi
  for i = 1, p.k do
    local cap = CAPS[p.cref[i]][mi]
    if cap == false then
      rooms[i] = false
    else
      local cell = p.cell[i]
      local x = cap - cell[u] - cell[r]
      if x < 0 then x = 0 end
      rooms[i] = x
    end
  end
  return rooms
end

local function extras_of(p, mi)
  if #p.xids == 0 then return false end
  local out, any = {}, false
  local u, r = 2 * mi - 1, 2 * mi
  for j = 1, p.k do
    local ids = p.xs[j]
    local row = EMPTY
    for q = 1, #ids do
      local e = ids[q]
      local a = CAPS['$' .. e][mi]
      if a ~= false then
        local x = a - X[e][u] - X[e][r]
        if x < 0 then x = 0 end
        if row == EMPTY then row = {} end
        row[#row + 1] = {e, x}
        any = true
      end
    end
    out[j] = row
  end
  if not any then return false end
  return out
end

-- Add sign * plan to slot s (1 spend, 2 hold) of metric mi on path p.
local function apply(p, mi, s, a, taken, sign)
  local f = 2 * mi - 2 + s
  for i = 1, p.k do
    local cell = p.cell[i]
    cell[f] = cell[f] + sign * a
    local d = DIRTY[p.pkey[i]]
    if not d then
      d = {}
      DIRTY[p.pkey[i]] = d
    end
    d[nid_of(p, i)] = true
  end
  for q = 1, #taken do
    local e, j, x = taken[q][1], taken[q][2], taken[q][3]
    for i = 1, j - 1 do
      local cell = p.cell[i]
      cell[f] = cell[f] + sign * x
    end
    X[e][f] = X[e][f] + sign * x
    DIRTYX[e] = true
  end
end

local RECSET, DLSET, XPSET = {}, {}, {}
local reclist, dllist, xplist = {}, {}, {}
local function set_rec(rid, v)
  if RECSET[rid] == nil then reclist[#reclist + 1] = rid end
  RECSET[rid] = v
  REC[rid] = v
end
local function set_dl(rid, v)
  if DLSET[rid] == nil then dllist[#dllist + 1] = rid end
  DLSET[rid] = v
  SCORE[rid] = v or nil
end
local function set_xp(rid, v)
  if XPSET[rid] == nil then xplist[#xplist + 1] = rid end
  XPSET[rid] = v
  INXP[rid] = v and true or false
end

local function encode_taken(out, taken)
  out[#out + 1] = #taken
  for q = 1, #taken do
    out[#out + 1] = taken[q][1]
    out[#out + 1] = taken[q][2] - 1 -- 0-based node index, as in quota/waterfall.py
    out[#out + 1] = taken[q][3]
  end
end

-- ---- limits and contracts (quota/SEMANTICS.md "Limits and contracts"; reference: quota/limits.py) ------
-- A window (eq:{I}:rl:<suffix>) holds 60 one-second buckets: field '<sec>' = "<req> <tok>" and field 't' =
-- "<req> <tok> <old> <last> <lreq> <ltok>" (totals, oldest and newest second with a bucket, the newest
-- bucket). Second s counts while s > now_sec - 60. Leases (eq:{I}:cc:<suffix>): ZSET rid -> deadline ms.
-- Both are read once per batch and cached here (WIN, LEASE); windows are written back at the end.
local LPFX = string.sub(CFG, 1, -4) -- 'eq:{I}:'
local WIN, WINLIST, LEASE = {}, {}, {}
local function sec_field(s) return string.format('%d', s) end
local function two(v)
  local a, b = string.match(v, '^(%-?%d+) (%-?%d+)$')
  return tonumber(a), tonumber(b)
end

local function bucket(w, s)
  local b = w.b[s]
  if b then return b end
  local v = (not w.wipe) and redis.call('HGET', w.key, sec_field(s))
  if v then b = {two(v)} else b = {0, 0} end
  w.b[s] = b
  return b
end

-- Drop the buckets that left the window at second `sec` (at most 60 fields, once per key per second).
local function prune(w, sec)
  local lo = sec - 59
  if w.last and w.last < lo then
    w.wipe, w.req, w.tok, w.old, w.last, w.b, w.dirty, w.del = true, 0, 0, false, false, {}, {}, {}
    return
  end
  if not w.old or w.old >= lo then return end
  local f = {}
  for s = w.old, w.last do
    if not w.b[s] then f[#f + 1] = sec_field(s) end
  end
  if #f > 0 then
    local v = redis.call('HMGET', w.key, unpack(f))
    for q = 1, #f do
      if v[q] then w.b[tonumber(f[q])] = {two(v[q])} end
    end
  end
  local old = false
  for s = w.old, w.last do
    local b = w.b[s]
    if b then
      if s < lo then
        w.req, w.tok = w.req - b[1], w.tok - b[2]
        w.b[s], w.dirty[s] = nil, nil
        w.del[#w.del + 1] = sec_field(s)
      elseif not old then
        old = s
      end
    end
  end
  w.old = old
  if not old then w.last = false end
end

local function win(suffix, sec)
  local w = WIN[suffix]
  if not w then
    local key = LPFX .. 'rl:' .. suffix
    w = {key = key, req = 0, tok = 0, old = false, last = false, b = {}, dirty = {}, del = {}, wipe = false}
    local t = redis.call('HGET', key, 't')
    if t then
      local req, tok, old, last, lreq, ltok = string.match(t, '^(%-?%d+) (%-?%d+) (%d+) (%d+) (%-?%d+) (%-?%d+)$')
      w.req, w.tok, w.old, w.last = tonumber(req), tonumber(tok), tonumber(old), tonumber(last)
      w.b[w.last] = {tonumber(lreq), tonumber(ltok)}
    end
    WIN[suffix] = w
    WINLIST[#WINLIST + 1] = suffix
  end
  prune(w, sec)
  return w
end

-- Move second s's bucket by (dr, dt), never below 0; the totals follow what the bucket really moved.
local function wadd(w, s, dr, dt)
  local b = bucket(w, s)
  local nr, nt = math.max(0, b[1] + dr), math.max(0, b[2] + dt)
  w.req, w.tok = w.req + nr - b[1], w.tok + nt - b[2]
  b[1], b[2] = nr, nt
  w.dirty[s] = true
  if not w.old or s < w.old then w.old = s end
  if not w.last or s > w.last then w.last = s end
end

-- New leases are written once per key at the end of the batch (c.add: score, rid, ...); n counts them.
local LEASELIST = {}
local function flush_leases(c)
  if #c.add > 0 then
    chunked('ZADD', c.key, c.add, 1000)
    redis.call('PEXPIRE', c.key, c.ttl)
    c.add = {}
  end
end

local function leases(suffix, now)
  local c = LEASE[suffix]
  if c and c.now >= now then return c end
  if c then flush_leases(c) end -- a later clock in the same batch (tests): count again from Redis
  local key = LPFX .. 'cc:' .. suffix
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not c then LEASELIST[#LEASELIST + 1] = suffix end
  c = {key = key, n = redis.call('ZCARD', key), now = now, add = {}, ttl = 0}
  LEASE[suffix] = c
  return c
end

local function unlease(suffix, rid)
  local key = LPFX .. 'cc:' .. suffix
  local gone = redis.call('ZREM', key, rid)
  local c = LEASE[suffix]
  if c then c.n = c.n - gone end
end

-- A contract cell {cost up, cost held, 0, 0} of counter hash `pkey`, read once per batch.
local function ccell(pkey, node)
  local cells = C[pkey]
  if not cells then
    FRESH[pkey] = redis.call('HEXISTS', KPFX .. pkey, '_') == 0
    cells = {}
    C[pkey] = cells
  end
  local c = cells[node]
  if not c then
    want(pkey, node)
    local a, b, x, y = counters_of(redis.call('HGET', KPFX .. pkey, node))
    c = {a, b, x, y}
    cells[node] = c
  end
  return c
end

local function ctouch(pkey, node)
  local d = DIRTY[pkey]
  if not d then
    d = {}
    DIRTY[pkey] = d
  end
  d[node] = true
end

local function lnow_of(v)
  if v == '-' then return tnow() end
  return tonumber(v)
end

-- Load the op's windows and leases, pruned at its second.
local function lim_open(op)
  if not op.lims then return end
  op.now_ms = lnow_of(op.lnow)
  op.sec = math.floor(op.now_ms / 1000)
  for _, e in ipairs(op.lims) do
    if e.rpm or e.tpm then e.w = win(e.key, op.sec) end
    if e.cc then e.c = leases(e.key, op.now_ms) end
  end
end

local function reset_ms(w, now)
  if not w.old then return 0 end
  return math.max(0, (w.old + 60) * 1000 - now)
end

-- When enough buckets have left for (need_r, need_t) more to fit; -1: never (more than the window holds).
local function retry_ms(w, need_r, need_t, now)
  local fr, ft = 0, 0
  if w.old then
    for s = w.old, w.last do
      local b = bucket(w, s)
      fr, ft = fr + b[1], ft + b[2]
      if fr >= need_r and ft >= need_t then return math.max(1, (s + 60) * 1000 - now) end
    end
  end
  return -1
end

-- The tightest requests and tokens limits after the op: limit, left, reset ms (-1s: no such limit).
-- Tightest = least left; ties go to the nearest node (first listed).
local function lim_hdr(op, out)
  if not op.lims then return out end
  local h = {-1, -1, -1, -1, -1, -1}
  for _, e in ipairs(op.lims) do
    if e.rpm then
      local left = math.max(0, e.rpm - e.w.req)
      if h[1] == -1 or left < h[2] then h[1], h[2], h[3] = e.rpm, left, reset_ms(e.w, op.now_ms) end
    end
    if e.tpm then
      local left = math.max(0, e.tpm - e.w.tok)
      if h[4] == -1 or left < h[5] then h[4], h[5], h[6] = e.tpm, left, reset_ms(e.w, op.now_ms) end
    end
  end
  for q = 1, 6 do out[#out + 1] = h[q] end
  return out
end

-- The largest output n <= n0 that fits the token and contract rooms, or a refusal reply.
local function lim_fit(op, n0, tin, pin, pout, nmin, nout)
  local now = op.now_ms
  for i, e in ipairs(op.lims or EMPTY) do -- requests and concurrency first, nearest node first
    if e.rpm and e.w.req + 1 > e.rpm then
      return lim_hdr(op, {'LIMITED', 'requests', i - 1, e.rpm, 1, retry_ms(e.w, e.w.req + 1 - e.rpm, 0, now)})
    end
    if e.cc and e.c.n + 1 > e.cc then
      return lim_hdr(op, {'LIMITED', 'concurrent', i - 1, e.cc, 1, 1000})
    end
  end
  local n = n0
  for _, e in ipairs(op.lims or EMPTY) do
    if e.tpm then n = math.min(n, math.max(0, e.tpm - e.w.tok) - tin) end
  end
  local room_c, ci = false, 0
  for j, k in ipairs(op.cons or EMPTY) do
    local c = ccell(k.pkey, k.node)
    local r = math.max(0, k.ceil - c[1] - c[2])
    if room_c == false or r < room_c then room_c, ci = r, j end
  end
  if room_c ~= false and cost_of(tin, n, pin, pout) > room_c then
    if pout == 0 then
      n = -1
    else
      n = math.min(n, floor_div(room_c * MICRO - tin * pin, pout))
    end
  end
  if n >= n0 or (n >= nmin and n >= 0) then return nil, n end
  local need_n = math.min(nmin, nout)
  local need_c = cost_of(tin, need_n, pin, pout)
  if room_c ~= false and need_c > room_c then
    return lim_hdr(op, {'CONTRACT', ci - 1, need_c, room_c})
  end
  local need, at, retry = tin + need_n, 0, 0 -- the node whose room frees last (-1: one can never fit)
  for i, e in ipairs(op.lims) do
    if e.tpm and e.tpm - e.w.tok < need then
      local r = -1
      if need <= e.tpm then r = retry_ms(e.w, 0, e.w.tok + need - e.tpm, now) end
      if at == 0 or retry ~= -1 and (r == -1 or r > retry) then at, retry = i, r end
    end
  end
  return lim_hdr(op, {'LIMITED', 'tokens', at - 1, op.lims[at].tpm, need, retry})
end

-- Count the admitted op: windows, leases, contract holds. Returns record line 4.
local function lim_take(op, amt_c, amt_t)
  local line = {'L', sec_field(op.sec or 0), #(op.lims or EMPTY)}
  for _, e in ipairs(op.lims or EMPTY) do
    local tok = '-'
    if e.w then
      wadd(e.w, op.sec, 1, amt_t)
      tok = amt_t
    end
    local cc = 0
    if e.cc then
      local c = e.c
      c.add[#c.add + 1] = op.now_ms + op.lease
      c.add[#c.add + 1] = op.rid
      c.ttl = math.max(c.ttl, 2 * op.lease)
      c.n = c.n + 1
      cc = 1
    end
    line[#line + 1] = e.key
    line[#line + 1] = tok
    line[#line + 1] = cc
  end
  line[#line + 1] = #(op.cons or EMPTY)
  for _, k in ipairs(op.cons or EMPTY) do
    local c = ccell(k.pkey, k.node)
    c[2] = c[2] + amt_c
    ctouch(k.pkey, k.node)
    line[#line + 1] = k.node
    line[#line + 1] = k.pkey
    line[#line + 1] = amt_c
  end
  for q = 1, #line do
    if type(line[q]) == 'number' then line[q] = string.format('%d', line[q]) end
  end
  return table.concat(line, '\t')
end

-- Record line 4 -> {sec, wins = {{suffix, tok or false, cc}}, cons = {{node, pkey, held}}}, or false.
local function decode_lim(rec)
  local l4 = string.match(rec, '^[^\n]*\n[^\n]*\n[^\n]*\nL\t([^\n]*)')
  if not l4 then return false end
  local f = {}
  for w in string.gmatch(l4, '[^\t]+') do f[#f + 1] = w end
  local out = {sec = tonumber(f[1]), wins = {}, cons = {}}
  local at = 3
  for i = 1, tonumber(f[2]) do
    out.wins[i] = {f[at], tonumber(f[at + 1]) or false, f[at + 2] == '1'}
    at = at + 3
  end
  local nc = tonumber(f[at])
  at = at + 1
  for j = 1, nc do
    out.cons[j] = {f[at], f[at + 1], tonumber(f[at + 2])}
    at = at + 3
  end
  return out
end

-- Did a provider / model node's provider or model serve? SERVED '' (unknown): every node counts as served.
local function served_by(node, served)
  if served == '' or served == nil then return true end
  local prov = string.match(served, '^([^|]*)|')
  local kind, id = string.match(node, '^(%a+):(.*)$')
  if kind == 'p' or (kind == 'c' and not string.find(id, '|', 1, true)) then return id == prov end
  if kind == 'pm' or kind == 'c' then return id == served end
  return true -- unit and member windows: the request ran, whichever provider served it
end

-- Undo a hold's limit parts. mode 'S' (settled: correct tokens, refund unserved provider nodes, charge the
-- served contracts), 'L' (released: refund all), 'X' (expired: windows stay, contract holds become spend).
-- Returns the contract charges {node, pkey, amount}.
local function lim_undo(op, lim, mode, cost, tokens)
  local sec = false
  for _, e in ipairs(lim.wins) do
    if e[2] and mode ~= 'X' then
      if not sec then sec = math.floor(lnow_of(op.lnow) / 1000) end
      local w = win(e[1], sec)
      if lim.sec > sec - 60 then
        if mode == 'L' or not served_by(e[1], op.served) then
          wadd(w, lim.sec, -1, -e[2])
        else
          wadd(w, lim.sec, 0, tokens - e[2])
        end
      end
    end
    if e[3] then unlease(e[1], op.rid) end
  end
  local charged = {}
  for _, k in ipairs(lim.cons) do
    local c = ccell(k[2], k[1])
    c[2] = math.max(0, c[2] - k[3])
    ctouch(k[2], k[1])
    local amount = false
    if mode == 'X' then
      amount = k[3]
    elseif mode == 'S' and served_by(k[1], op.served) then
      amount = cost
    end
    if amount then
      c[1] = c[1] + amount
      charged[#charged + 1] = {k[1], k[2], amount}
    end
  end
  return charged
end

local function reserve(op)
  if not VER then return {'NOINST'} end
  if VER ~= op.token then return {'STALE', VER} end
  local limited = op.lims or op.cons
  if limited then lim_open(op) end
  local p, k = op.p, op.p.k
  local tin, nout, pin, pout, nmin = op.tin, op.nout, op.pin, op.pout, op.nmin
  local rooms_c, rooms_t = rooms_of(p, 1), rooms_of(p, 2)
  local xs_c, xs_t = extras_of(p, 1), extras_of(p, 2)
  local cap_c, cap_t = capacity(rooms_c, xs_c, k), capacity(rooms_t, xs_t, k)
  local function fits(n)
    return (cap_c == false or cost_of(tin, n, pin, pout) <= cap_c) and (cap_t == false or tin + n <= cap_t)
  end
  local n, clamped = nout, 0
  if not fits(n) then
    clamped = 1
    if cap_t ~= false then n = math.min(n, cap_t - tin) end
    if cap_c ~= false then
      if pout == 0 then
        if cost_of(tin, 0, pin, 0) > cap_c then n = -1 end
      else
        n = math.min(n, floor_div(cap_c * MICRO - tin * pin, pout))
      end
    end
    if n < nmin or n < 0 then
      local need_n = math.min(nmin, nout)
      local need_c = cost_of(tin, need_n, pin, pout)
      if cap_c ~= false and need_c > cap_c then
        return lim_hdr(op, {'REFUSED', 'cost', binding(need_c, rooms_c, xs_c, k) - 1, need_c, cap_c})
      end
      local need_t = tin + need_n
      return lim_hdr(op, {'REFUSED', 'tokens', binding(need_t, rooms_t, xs_t, k) - 1, need_t, cap_t})
    end
  end
  if limited then -- after the budget: a budget refusal is final for its period, a rate limit's is not
    local refusal, n2 = lim_fit(op, n, tin, pin, pout, nmin, nout)
    if refusal then return refusal end
    if n2 < n then n, clamped = n2, 1 end
  end
  local amt_c, amt_t = cost_of(tin, n, pin, pout), tin + n
  local ac, tc = plan(amt_c, rooms_c, xs_c, k)
  local at, tt = plan(amt_t, rooms_t, xs_t, k)
  apply(p, 1, 2, ac, tc, 1)
  apply(p, 2, 2, at, tt, 1)
  local rec = encode_record(p, {{ac, tc}, {at, tt}}, op.meta)
  if limited then rec = rec .. '\n' .. lim_take(op, amt_c, amt_t) end
  set_rec(op.rid, rec)
  local deadline = at_ms(op.deadline)
  set_dl(op.rid, deadline)
  -- What is left after this hold, and which node limits it (rate-limit style headers).
  local out = {'OK', n, clamped, amt_c, amt_t}
  for mi = 1, 2 do
    local rooms, xs
    local held = (mi == 1) and ac or at
    if (mi == 1 and xs_c == false) or (mi == 2 and xs_t == false) then
      rooms, xs = (mi == 1) and rooms_c or rooms_t, false
      for i = 1, k do
        if rooms[i] ~= false then rooms[i] = rooms[i] - held end
      end
    else
      rooms, xs = rooms_of(p, mi), extras_of(p, mi)
    end
    local li, left = limiting(rooms, xs, k)
    if li == false then
      out[#out + 1] = -1
      out[#out + 1] = -1
    else
      out[#out + 1] = li - 1
      out[#out + 1] = left
    end
  end
  out[#out + 1] = deadline
  return lim_hdr(op, out)
end

local SRSET, srlist = {}, {}
local function keep_reply(rid, out)
  local words = {}
  for q = 1, #out do
    local v = out[q]
    if type(v) == 'number' then v = string.format('%d', v) end
    words[q] = v
  end
  SRV[rid] = table.concat(words, ' ')
  if not SRSET[rid] then srlist[#srlist + 1] = rid end
  SRSET[rid] = true
  return out
end

local function replay(v)
  local out = {}
  for w in string.gmatch(v, '%S+') do out[#out + 1] = w end
  return out
end

local function settle(op)
  local p, rec, status = op.p, REC[op.rid], 'OK'
  if SRV[op.rid] and not rec then return replay(SRV[op.rid]) end -- a repeat: the first reply
  local charged = false
  if rec then
    local holds = decode_holds(rec)
    apply(p, 1, 2, holds[1][1], holds[1][2], -1)
    apply(p, 2, 2, holds[2][1], holds[2][2], -1)
    local lim = decode_lim(rec)
    if lim then charged = lim_undo(op, lim, 'S', op.cost, op.tokens) end
    set_rec(op.rid, false)
    set_dl(op.rid, false)
  elseif INXP[op.rid] then
    set_xp(op.rid, false)
    return keep_reply(op.rid, {'LATE'}) -- expiry billed the hold: charging the usage too would bill it twice
  else
    return {'GONE'}
  end
  local out = {status}
  local actual = {op.cost, op.tokens}
  for mi = 1, 2 do
    local a, taken, funded = plan(actual[mi], rooms_of(p, mi), extras_of(p, mi), p.k)
    apply(p, mi, 1, a, taken, 1)
    out[#out + 1] = a
    out[#out + 1] = funded
    encode_taken(out, taken)
  end
  if charged then -- only a hold with a limit line: (contract node, period key, amount)*
    out[#out + 1] = #charged
    for _, ch in ipairs(charged) do
      out[#out + 1] = ch[1]
      out[#out + 1] = ch[2]
      out[#out + 1] = ch[3]
    end
  end
  return keep_reply(op.rid, out)
end

local function unhold_record(op)
  apply(op.rp, 1, 2, op.holds[1][1], op.holds[1][2], -1)
  apply(op.rp, 2, 2, op.holds[2][1], op.holds[2][2], -1)
  local lim = decode_lim(REC[op.rid])
  if lim then lim_undo(op, lim, 'L') end
  set_rec(op.rid, false)
  set_dl(op.rid, false)
end

local function release(op)
  if REC[op.rid] and not op.rp then error('quota ops: a reservation released in the batch that made it') end
  if REC[op.rid] then
    unhold_record(op)
    return {'RELEASED'}
  end
  if INXP[op.rid] then
    set_xp(op.rid, false)
    return {'EXPIRED'}
  end
  return {'GONE'}
end

local UNSETTLED = {}
local function expire(op)
  local score = SCORE[op.rid]
  if REC[op.rid] and not op.rp then error('quota ops: a reservation expired in the batch that made it') end
  if REC[op.rid] and score and score <= op.now then
    if not string.find(REC[op.rid], '\n', string.find(REC[op.rid], '\n', 1, true) + 1, true) then
      -- A hold of the previous release (no usage-event skeleton: two lines). Released as that release
      -- did, not billed: its gateway, if alive, settles it late with that release's script, which charges
      -- what was used; billing it here too would charge the request twice during a rolling upgrade.
      unhold_record(op)
      set_xp(op.rid, op.now)
      return {'EXPIRED'}
    end
    -- the hold becomes spend, exactly as held (it fitted every cap when it was made)
    for mi = 1, 2 do
      apply(op.rp, mi, 2, op.holds[mi][1], op.holds[mi][2], -1)
      apply(op.rp, mi, 1, op.holds[mi][1], op.holds[mi][2], 1)
    end
    local lim = decode_lim(REC[op.rid])
    if lim then lim_undo(op, lim, 'X') end
    UNSETTLED[#UNSETTLED + 1] = op.rid .. '\n' .. REC[op.rid]
    set_rec(op.rid, false)
    set_dl(op.rid, false)
    set_xp(op.rid, op.now)
    return {'EXPIRED'}
  end
  return {'SKIP'}
end

-- Renewing a live hold's concurrency leases: ZADD without XX, so a lease that lapsed (a late renewal) or
-- whose key vanished comes back while its request runs; and the key's expiry (which collects a dead
-- member's key, set when a lease is added) moves to 2 x lease again: a request longer than that, while
-- every other one is refused and so adds nothing, would otherwise lose its key and free its slot. The
-- expiry runs on Redis's clock, so it moves only when the lease time is relative to it ('+<ms>'); a
-- test's simulated clock leaves it as the reserve set it.
local function renew(op)
  if REC[op.rid] and SCORE[op.rid] then
    if op.deadline > SCORE[op.rid] then set_dl(op.rid, op.deadline) end
    local lim = decode_lim(REC[op.rid])
    if lim then
      local at, ttl = false, false
      for _, e in ipairs(lim.wins) do
        if e[3] then
          if not at then
            at = at_ms(op.lease_at)
            if string.sub(op.lease_at, 1, 1) == '+' then ttl = 2 * tonumber(string.sub(op.lease_at, 2)) end
          end
          local key = LPFX .. 'cc:' .. e[1]
          if redis.call('ZADD', key, at, op.rid) == 1 and LEASE[e[1]] then LEASE[e[1]].n = LEASE[e[1]].n + 1 end
          if ttl then redis.call('PEXPIRE', key, ttl) end
        end
      end
    end
    return {'RENEWED'}
  end
  return {'GONE'}
end

local replies = {}
for o = 1, #ops do
  local op = ops[o]
  if op.t == 'R' then
    replies[o] = reserve(op)
  elseif op.t == 'S' then
    replies[o] = settle(op)
  elseif op.t == 'L' then
    replies[o] = release(op)
  elseif op.t == 'N' then
    replies[o] = renew(op)
  else
    replies[o] = expire(op)
  end
end

-- ---- write back: one command per hash -----------------------------------------------------
for _, pkey in ipairs(pkeys) do
  local d = DIRTY[pkey]
  if d then
    local f = {}
    if FRESH[pkey] then
      f[1] = '_'
      f[2] = '1'
      redis.call('SADD', PK, KPFX .. pkey)
    end
    local cells = C[pkey]
    for _, nid in ipairs(needlist[pkey]) do
      if d[nid] then
        local c = cells[nid]
        f[#f + 1] = nid
        f[#f + 1] = pack4(c[1], c[2], c[3], c[4])
      end
    end
    chunked('HSET', KPFX .. pkey, f, 1000)
  end
end
if #xlist > 0 then
  local f = {}
  for _, e in ipairs(xlist) do
    if DIRTYX[e] then
      local c = X[e]
      f[#f + 1] = e
      f[#f + 1] = pack4(c[1], c[2], c[3], c[4])
    end
  end
  chunked('HSET', XC, f, 1000)
end
for _, suffix in ipairs(LEASELIST) do flush_leases(LEASE[suffix]) end
for _, suffix in ipairs(WINLIST) do
  local w = WIN[suffix]
  if w.wipe then redis.call('DEL', w.key) end
  if #w.del > 0 then chunked('HDEL', w.key, w.del, 1000) end
  if not w.old then
    if not w.wipe then redis.call('DEL', w.key) end
  else
    local f = {}
    for s in pairs(w.dirty) do
      f[#f + 1] = sec_field(s)
      f[#f + 1] = string.format('%d %d', w.b[s][1], w.b[s][2])
    end
    if #f > 0 or #w.del > 0 then
      local lb = bucket(w, w.last)
      f[#f + 1] = 't'
      f[#f + 1] = string.format('%d %d %d %d %d %d', w.req, w.tok, w.old, w.last, lb[1], lb[2])
      chunked('HSET', w.key, f, 1000)
      redis.call('PEXPIRE', w.key, 61000)
    end
  end
end
local hset, hdel, zadd, zrem, xadd, xrem = {}, {}, {}, {}, {}, {}
for _, rid in ipairs(reclist) do
  local v = RECSET[rid]
  if v then
    hset[#hset + 1] = rid
    hset[#hset + 1] = v
  else
    hdel[#hdel + 1] = rid
  end
end
for _, rid in ipairs(dllist) do
  local v = DLSET[rid]
  if v then
    zadd[#zadd + 1] = v
    zadd[#zadd + 1] = rid
  else
    zrem[#zrem + 1] = rid
  end
end
for _, rid in ipairs(xplist) do
  local v = XPSET[rid]
  if v then
    xadd[#xadd + 1] = v
    xadd[#xadd + 1] = rid
  else
    xrem[#xrem + 1] = rid
  end
end
chunked('HSET', RS, hset, 1000)
chunked('HDEL', RS, hdel, 1000)
chunked('ZADD', DL, zadd, 1000)
chunked('ZREM', DL, zrem, 1000)
chunked('ZADD', XP, xadd, 1000)
chunked('ZREM', XP, xrem, 1000)
chunked('RPUSH', UN, UNSETTLED, 1000)
if #srlist > 0 then
  local sh, sz = {}, {}
  local at = string.format('%d', tnow())
  for _, rid in ipairs(srlist) do
    sh[#sh + 1] = rid
    sh[#sh + 1] = SRV[rid]
    sz[#sz + 1] = at
    sz[#sz + 1] = rid
  end
  chunked('HSET', SR, sh, 1000)
  chunked('ZADD', ST, sz, 1000)
end
return replies
