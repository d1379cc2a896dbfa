-- Rampart limits: one atomic script for admission ('a'; 'w' for a reservation that must also
-- fit whole in what is left of every budget, a batch's worst case) and settlement ('s').
-- The arithmetic mirrors crates/rampart-limits/src/engine.rs and local.rs; keep them in step.
--
-- KEYS, four per scope (all with the team's hash tag, so one script touches one slot):
--   bucket hash (r|i|o)l = level scaled by 60000, (r|i|o)t = last update (ms),
--     (r|i|o)c = the limit it was kept at (a raised limit adds the raise at once)
--   in-flight zset: ticket -> lease expiry (ms)
--   budget hash of the period: spent, reserved, r:<ticket> = reserved cost
--   budget lease zset of the period: ticket -> lease expiry (ms)
-- ARGV: op, now, ticket, lease_ms, scopes, need_in, need_out, cost, used_in, used_out,
--   used_cost, then six per scope: rpm, itpm, otpm, concurrency, budget, budget keys' expiry
--   (ms since the epoch, on the caller's clock: applied relative to `now`).
-- Admission returns {admitted, then per scope: level r, level i, level o, in flight,
--   budget committed}, seen before the reservation. Settlement returns {1}.
local W = 60000
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

local function level_of(key, d, limit)
  local v = redis.call('HMGET', key, d .. 'l', d .. 't', d .. 'c')
  local cap = limit * W
  if not v[1] then return cap end
  local level = tonumber(v[1])
  local was = tonumber(v[3] or limit)
  if was < limit then level = level + (limit - was) * W end
  local room = cap - level
  if room <= 0 then return cap end
  local elapsed = now - tonumber(v[2])
  if elapsed < 0 then elapsed = 0 end
  if elapsed >= math.ceil(room / limit) then return cap end
  return level + elapsed * limit
end

local function store(key, d, level, limit)
  redis.call('HSET', key, d .. 'l', fmt(level), d .. 't', fmt(now), d .. 'c', fmt(limit))
  return math.ceil((limit * W - level) / limit) + 1000
end

local function extend(key, ttl)
  if ttl > redis.call('PTTL', key) then
    redis.call('PEXPIRE', key, fmt(ttl))
  end
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

if op == 'a' or op == 'w' then
  local ok = 1
  local out = {0}
  local levels = {}
  for s = 0, n - 1 do
    local b, c, g, l, lim, conc, blimit = scope(s)
    levels[s] = {0, 0, 0}
    for d = 1, 3 do
      if lim[d] > 0 then
        levels[s][d] = level_of(b, dims[d], lim[d])
        if need[d] > 0 and levels[s][d] < W then ok = 0 end
      end
    end
    local inflight = 0
    if conc > 0 then
      redis.call('ZREMRANGEBYSCORE', c, '-inf', fmt(now))
      inflight = redis.call('ZCARD', c)
      if inflight >= conc then ok = 0 end
    end
    local comm = 0
    if blimit > 0 then
      comm = committed(g, l)
      if cost > 0 and comm >= blimit then ok = 0 end
      if op == 'w' and cost > blimit - comm then ok = 0 end
    end
    for d = 1, 3 do table.insert(out, levels[s][d]) end
    table.insert(out, inflight)
    table.insert(out, comm)
  end
  out[1] = ok
  if ok == 1 then
    for s = 0, n - 1 do
      local b, c, g, l, lim, conc, blimit, bexpire = scope(s)
      local ttl = 0
      for d = 1, 3 do
        if lim[d] > 0 then
          local t = store(b, dims[d], levels[s][d] - need[d] * W, lim[d])
          if t > ttl then ttl = t end
        end
      end
      if ttl > 0 then extend(b, ttl) end
      if conc > 0 then
        redis.call('ZADD', c, fmt(now + lease), ticket)
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

if op == 's' then
  for s = 0, n - 1 do
    local b, c, g, l, lim, conc, blimit, bexpire = scope(s)
    local ttl = 0
    for d = 2, 3 do
      if lim[d] > 0 then
        local level = level_of(b, dims[d], lim[d]) + (need[d] - used[d]) * W
        if level > lim[d] * W then level = lim[d] * W end
        local t = store(b, dims[d], level, lim[d])
        if t > ttl then ttl = t end
      end
    end
    if ttl > 0 then extend(b, ttl) end
    if conc > 0 then
      redis.call('ZREM', c, ticket)
    end
    if blimit > 0 and (cost > 0 or used_cost > 0) then
      if redis.call('ZREM', l, ticket) == 1 then
        redis.call('HINCRBY', g, 'reserved', fmt(-cost))
        redis.call('HDEL', g, 'r:' .. ticket)
        redis.call('HINCRBY', g, 'spent', fmt(used_cost))
      else
        redis.call('HINCRBY', g, 'spent', fmt(used_cost - cost))
      end
      extend(g, bexpire - now)
    end
  end
  return {1}
end

return redis.error_reply('rampart limits: unknown op')
