-- Rampart limits: one atomic script for admission ('a'; 'w' for a reservation that must also
-- fit whole in what is left of every budget, a batch's worst case), settlement ('s'), release
-- ('r': the compensation for an admission whose answer was lost) and renewal ('k': a live
-- ticket's leases move to now + lease, so only a dead instance's reservations expire).
-- The arithmetic mirrors crates/rampart-limits/src/engine.rs and local.rs; keep them in step.
--
-- KEYS, four per scope (all with the team's hash tag, so one script touches one slot):
--   bucket hash (r|i|o)l = level scaled by 60000, (r|i|o)t = last update (ms),
--     (r|i|o)c = the limit it is kept at (c * 60000 - l is what was used, which refills at c:
--     a changed limit applies to that, as engine::refill says),
--     (i|o)v = tokens reserved by requests still in flight (not settled yet)
--   in-flight zset: '<ticket>:<input reserved>:<output reserved>' -> lease expiry (ms), one
--     member per admitted ticket of a scope with rates or a concurrency limit
--   budget hash of the period: spent, reserved, r:<ticket> = reserved cost
--   budget lease zset of the period: ticket -> lease expiry (ms)
-- then one more: the ticket's tombstone (set by a release; an admission that finds it takes
--   nothing, so an admission that runs after its own release leaves nothing behind).
-- ARGV: op, now, ticket, lease_ms, scopes, need_in, need_out, cost, used_in, used_out,
--   used_cost, then six per scope: rpm, itpm, otpm, concurrency, budget, budget keys' expiry
--   (ms since the epoch, on the caller's clock: applied relative to `now`).
-- Admission returns {admitted, then per scope: level r, level i, level o, in flight,
--   budget committed, input reserved, output reserved, then the rate r, i, o each bucket
--   refills at (the limit it is kept at; 0 when unlimited)}, seen before the reservation; admitted
--   is 1 (also when this ticket was already admitted: a resend takes nothing twice), 0 (refused)
--   or 2 (the ticket was released). Settlement, release and renewal return {1}.
--
-- Idempotence: a ticket's in-flight member (or, in a budget-only scope, its budget lease) says
-- it holds a reservation; settlement and release act only on the members they remove, so a
-- settlement or release sent twice (retried after a lost answer) changes nothing the second
-- time, and a release of a ticket that was never admitted only leaves its tombstone.
local W = 60000
-- A bucket written more than this far in the future was written before the clock was set back
-- (instances' clocks agree far better: NTP).
local STEP_MS = 5000
local op = ARGV[1]
local now = tonumber(ARGV[2])
local ticket = ARGV[3]
local lease = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local need = {1, tonumber(ARGV[6]), tonumber(ARGV[7])}
local cost = tonumber(ARGV[8])
local used = {0, tonumber(ARGV[9]), tonumber(ARGV[10])}
local used_cost = tonumber(ARGV[11])
local dims = {'r', 'i', 'o'}

local function fmt(x)
  return string.format('%.0f', x)
end

-- A bucket's level refilled to `now` for a request under `limit`, the tokens reserved in it by
-- requests in flight, and the rate it refills at until its next admission (engine::refill: what
-- was used refills at the limit the bucket is kept at).
local function level_of(key, d, limit)
  local v = redis.call('HMGET', key, d .. 'l', d .. 't', d .. 'c', d .. 'v')
  local cap = limit * W
  local rsv = tonumber(v[4] or '0')
  if rsv < 0 then rsv = 0 end
  if not v[1] then return cap, rsv, limit end
  local was = tonumber(v[3] or limit)
  local elapsed = now - tonumber(v[2])
  if elapsed < 0 then
    -- Written after `now`: by an instance whose clock is ahead (a skew, refilling nothing until
    -- this clock catches up), or before this clock was set back by more than any skew, when the
    -- bucket refills from now on (else it would wait for the clock to catch up).
    if elapsed < -STEP_MS then redis.call('HSET', key, d .. 't', fmt(now)) end
    elapsed = 0
  end
  local used = was * W - tonumber(v[1]) - elapsed * was
  if used < 0 then used = 0 end
  return cap - used, rsv, was
end

-- Store a level (and, for token buckets, what is reserved in it); returns how long the hash
-- must live: until the bucket is full again, and while anything is reserved, a lease longer.
local function store(key, d, level, limit, rsv)
  if rsv then
    redis.call('HSET', key, d .. 'l', fmt(level), d .. 't', fmt(now), d .. 'c', fmt(limit),
      d .. 'v', fmt(rsv))
  else
    redis.call('HSET', key, d .. 'l', fmt(level), d .. 't', fmt(now), d .. 'c', fmt(limit))
  end
  local ttl = math.ceil((limit * W - level) / limit) + 1000
  if rsv and rsv > 0 and lease + 1000 > ttl then ttl = lease + 1000 end
  return ttl
end

-- Settle bucket `d` of a ticket admitted under `limit` (engine::settle): refilled at the limit
-- it is kept at, `refund` (scaled) given back, `taken` tokens no longer reserved, and still
-- kept at that limit. Returns the hash's time to live.
local function settle_bucket(key, d, limit, refund, taken)
  local level, rsv, was = level_of(key, d, limit)
  local used = limit * W - level - refund
  if used < 0 then used = 0 end
  rsv = rsv - taken
  if rsv < 0 then rsv = 0 end
  return store(key, d, was * W - used, was, rsv)
end

local function extend(key, ttl)
  if ttl > redis.call('PTTL', key) then
    redis.call('PEXPIRE', key, fmt(ttl))
  end
end

-- Take `amount` off what is reserved in bucket `d` (never below zero, never creating the hash).
local function unreserve(b, d, amount)
  if amount <= 0 then return end
  local v = tonumber(redis.call('HGET', b, d .. 'v') or '0')
  if v > 0 then
    local left = v - amount
    if left < 0 then left = 0 end
    redis.call('HSET', b, d .. 'v', fmt(left))
  end
end

-- Requests in flight in a scope, after dropping expired leases (and what they reserved).
local function inflight(b, c)
  local expired = redis.call('ZRANGEBYSCORE', c, '-inf', fmt(now))
  for _, m in ipairs(expired) do
    local _, _, i, o = string.find(m, ':(%d+):(%d+)$')
    if i then
      unreserve(b, 'i', tonumber(i))
      unreserve(b, 'o', tonumber(o))
    end
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', c, '-inf', fmt(now))
  end
  return redis.call('ZCARD', c)
end

local function committed(g, l)
  local expired = redis.call('ZRANGEBYSCORE', l, '-inf', fmt(now))
  for _, m in ipairs(expired) do
    -- A lease that outlived its instance: charge the reservation (the request may have run).
    local amount = tonumber(redis.call('HGET', g, 'r:' .. m) or '0')
    redis.call('HINCRBY', g, 'reserved', fmt(-amount))
    redis.call('HINCRBY', g, 'spent', fmt(amount))
    redis.call('HDEL', g, 'r:' .. m)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', l, '-inf', fmt(now))
  end
  local v = redis.call('HMGET', g, 'spent', 'reserved')
  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end

local function scope(s)
  local a = 12 + s * 6
  return KEYS[s * 4 + 1], KEYS[s * 4 + 2], KEYS[s * 4 + 3], KEYS[s * 4 + 4],
    {tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])},
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
end

-- Whether a scope keeps an in-flight member per ticket: any rate or a concurrency limit.
local function tracked(lim, conc)
  return conc > 0 or lim[1] > 0 or lim[2] > 0 or lim[3] > 0
end

-- This ticket's in-flight member in a scope with limits `lim`: the tokens it reserved there.
local function member(lim)
  local i, o = 0, 0
  if lim[2] > 0 then i = need[2] end
  if lim[3] > 0 then o = need[3] end
  return ticket .. ':' .. fmt(i) .. ':' .. fmt(o)
end

local tomb = KEYS[n * 4 + 1]

if op == 'a' or op == 'w' then
  -- Released already (its answer was lost and the caller gave it back): take nothing.
  if redis.call('EXISTS', tomb) == 1 then return {2} end
  local ok = 1
  local again = false
  local out = {0}
  local levels = {}
  local rsvs = {}
  local rates = {}
  for s = 0, n - 1 do
    local b, c, g, l, lim, conc, blimit = scope(s)
    levels[s] = {0, 0, 0}
    rsvs[s] = {0, 0, 0}
    rates[s] = {0, 0, 0}
    for d = 1, 3 do
      if lim[d] > 0 then
        levels[s][d], rsvs[s][d], rates[s][d] = level_of(b, dims[d], lim[d])
        if need[d] > 0 and levels[s][d] < W then ok = 0 end
      end
    end
    local busy = 0
    if tracked(lim, conc) then
      busy = inflight(b, c)
      if redis.call('ZSCORE', c, member(lim)) then again = true end
      if conc > 0 and busy >= conc then ok = 0 end
    end
    local comm = 0
    if blimit > 0 then
      comm = committed(g, l)
      if cost > 0 and comm >= blimit then ok = 0 end
      if op == 'w' and cost > blimit - comm then ok = 0 end
      if cost > 0 and redis.call('ZSCORE', l, ticket) then again = true end
    end
    for d = 1, 3 do table.insert(out, levels[s][d]) end
    table.insert(out, busy)
    table.insert(out, comm)
    table.insert(out, rsvs[s][2])
    table.insert(out, rsvs[s][3])
    for d = 1, 3 do table.insert(out, rates[s][d]) end
  end
  -- Admitted already (a resend after a lost answer): admitted, and nothing taken twice.
  if again then
    out[1] = 1
    return out
  end
  out[1] = ok
  if ok == 1 then
    for s = 0, n - 1 do
      local b, c, g, l, lim, conc, blimit, bexpire = scope(s)
      local ttl = 0
      for d = 1, 3 do
        -- A bucket not drawn on is left as it is (see local.rs).
        if lim[d] > 0 and need[d] > 0 then
          local rsv = nil
          if d > 1 then rsv = rsvs[s][d] + need[d] end
          local t = store(b, dims[d], levels[s][d] - need[d] * W, lim[d], rsv)
          if t > ttl then ttl = t end
        end
      end
      if ttl > 0 then extend(b, ttl) end
      if tracked(lim, conc) then
        redis.call('ZADD', c, fmt(now + lease), member(lim))
        extend(c, lease + 1000)
      end
      if blimit > 0 and cost > 0 then
        redis.call('HINCRBY', g, 'reserved', fmt(cost))
        redis.call('HSET', g, 'r:' .. ticket, fmt(cost))
        redis.call('ZADD', l, fmt(now + lease), ticket)
        extend(g, bexpire - now)
        extend(l, bexpire - now)
      end
    end
  end
  return out
end

if op == 's' or op == 'r' then
  for s = 0, n - 1 do
    local b, c, g, l, lim, conc, blimit, bexpire = scope(s)
    -- Whether this call is the one that ends the ticket's reservation here: its in-flight
    -- member is still there (absent: never admitted, settled already, or its lease expired
    -- and the reservation went with it).
    local held = true
    if tracked(lim, conc) then
      held = redis.call('ZREM', c, member(lim)) == 1
    end
    if held and tracked(lim, conc) then
      local ttl = 0
      for d = 2, 3 do
        if lim[d] > 0 then
          local t = settle_bucket(b, dims[d], lim[d], (need[d] - used[d]) * W, need[d])
          if t > ttl then ttl = t end
        end
      end
      if ttl > 0 then extend(b, ttl) end
    end
    if blimit > 0 and cost > 0 then
      if redis.call('ZREM', l, ticket) == 1 then
        redis.call('HINCRBY', g, 'reserved', fmt(-cost))
        redis.call('HDEL', g, 'r:' .. ticket)
        redis.call('HINCRBY', g, 'spent', fmt(used_cost))
        extend(g, bexpire - now)
      end
    elseif blimit > 0 and used_cost > 0 and held then
      -- Nothing was reserved, yet something was spent.
      redis.call('HINCRBY', g, 'spent', fmt(used_cost))
      extend(g, bexpire - now)
    end
  end
  if op == 'r' then
    redis.call('SET', tomb, '1', 'PX', fmt(lease + 60000))
  end
  return {1}
end

if op == 'k' then
  -- Only leases still running move (in the admission's period keys, which the caller passes):
  -- one that lapsed already (its instance was taken for dead, or the ticket is settled) is
  -- not brought back, even while its member waits for the next admission to sweep it.
  for s = 0, n - 1 do
    local b, c, _, l, lim, conc, blimit = scope(s)
    if tracked(lim, conc) then
      local m = member(lim)
      local at = tonumber(redis.call('ZSCORE', c, m))
      if at and at > now then
        redis.call('ZADD', c, 'XX', fmt(now + lease), m)
        extend(c, lease + 1000)
        -- What it reserved in the token buckets stays counted while it runs.
        if lim[2] > 0 or lim[3] > 0 then extend(b, lease + 1000) end
      end
    end
    if blimit > 0 and cost > 0 then
      local at = tonumber(redis.call('ZSCORE', l, ticket))
      if at and at > now then
        redis.call('ZADD', l, 'XX', fmt(now + lease), ticket)
      end
    end
  end
  return {1}
end

return redis.error_reply('rampart limits: unknown op')
