-- aiproxy state layout v1: schedule one request in one step.
-- Mirrors state/memory.rs; the contract suite holds both to the same rules.
-- Keys (prefix P): s:<key>:<session> binding; ca:/cu:/ck:<id> lease ZSETs scored
-- by expiry; u:<id> unavailable and l:<id> rate-limited marks ("until|reason",
-- PX TTL); rpm:<key> admissions ZSET; lru ZSET + seq; q:/qd:<pool> wait line.
local P = ARGV[1]
local now = tonumber(ARGV[2])
local lease = ARGV[3]
local ttl = tonumber(ARGV[4])
local key_id, rpm, key_conc = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local user_id, user_conc = ARGV[8], tonumber(ARGV[9])
local session, session_ttl = ARGV[10], tonumber(ARGV[11])
local queue, queue_ttl = ARGV[12], tonumber(ARGV[13])
local retry = ARGV[14]
local mark_kind, mark_until, mark_reason = ARGV[15], tonumber(ARGV[16]), ARGV[17]
local random = tonumber(ARGV[18])
local n_ex = tonumber(ARGV[19])
local excluded = {}
for i = 1, n_ex do excluded[ARGV[19 + i]] = true end
local cands = {}
for i = 20 + n_ex, #ARGV, 4 do
  cands[#cands + 1] = { id = ARGV[i], prio = tonumber(ARGV[i + 1]),
    max = tonumber(ARGV[i + 2]), weight = tonumber(ARGV[i + 3]) }
end

local function live(k)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  return redis.call('ZCARD', k)
end

local function until_of(v)
  if not v then return 0 end
  return tonumber(string.match(v, '^(%-?%d+)')) or 0
end

local function put_mark(kind, id, untl, reason)
  if untl <= now then return end
  local k = P .. kind .. ':' .. id
  -- A later reset already known wins (two 429s racing); same rule as release.lua.
  if kind == 'l' and until_of(redis.call('GET', k)) > untl then return end
  redis.call('SET', k, untl .. '|' .. reason, 'PX', untl - now)
end

local first = retry == '0'
if not first then
  redis.call('ZREM', P .. 'ca:' .. retry, lease)
  if mark_kind ~= '' then put_mark(mark_kind, retry, mark_until, mark_reason) end
else
  if rpm > 0 then
    local rk = P .. 'rpm:' .. key_id
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - 60000)
    if redis.call('ZCARD', rk) >= rpm then
      local oldest = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
      return { 'rpm', tostring(math.max(1, tonumber(oldest[2]) + 60000 - now)) }
    end
  end
  if key_conc > 0 and live(P .. 'ck:' .. key_id) >= key_conc then return { 'key_busy' } end
  if user_conc > 0 and live(P .. 'cu:' .. user_id) >= user_conc then return { 'user_busy' } end
end

-- Both marks of every candidate, read in batches of 250 candidates (Lua's
-- unpack has a stack limit).
local umarks, lmarks = {}, {}
for from = 1, #cands, 250 do
  local keys = {}
  for i = from, math.min(from + 249, #cands) do
    keys[#keys + 1] = P .. 'u:' .. cands[i].id
    keys[#keys + 1] = P .. 'l:' .. cands[i].id
  end
  local vals = redis.call('MGET', unpack(keys))
  for j = 1, #keys, 2 do
    local i = from + (j - 1) / 2
    umarks[i], lmarks[i] = vals[j], vals[j + 1]
  end
end
local by_id = {}
for i, c in ipairs(cands) do
  if excluded[c.id] then c.blocked = 'failed'
  elseif umarks[i] and until_of(umarks[i]) > now then c.blocked = 'unavailable'
  elseif lmarks[i] and until_of(lmarks[i]) > now then c.blocked = 'rate_limited' end
  by_id[c.id] = c
end

local function room(c)
  if c.room == nil then
    if c.max == 0 then c.room = math.huge else c.room = math.max(0, c.max - live(P .. 'ca:' .. c.id)) end
  end
  return c.room
end

local sk = nil
if session ~= '' then sk = P .. 's:' .. key_id .. ':' .. session end
local bound = sk and redis.call('GET', sk)
local chosen, switched_from, reason = nil, '0', ''
if bound then
  local c = by_id[bound]
  if not c then switched_from, reason = bound, 'not_schedulable'
  elseif c.blocked then switched_from, reason = bound, c.blocked
  elseif room(c) > 0 then chosen = c end
  -- Full: this request overflows, the binding stays.
end

local qk, qd, queued = nil, nil, false
local function join_queue()
  if not qk then return end
  redis.call('ZADD', qk, 'NX', now, lease)
  redis.call('ZADD', qd, now + queue_ttl, lease)
  redis.call('PEXPIRE', qk, queue_ttl * 2)
  redis.call('PEXPIRE', qd, queue_ttl * 2)
end
if queue ~= '' then
  qk, qd = P .. 'q:' .. queue, P .. 'qd:' .. queue
  -- An empty line (the usual case) needs no sweep and has no one ahead.
  local ahead = 0
  if redis.call('ZCARD', qk) > 0 then
    local gone = redis.call('ZRANGEBYSCORE', qd, '-inf', now)
    if #gone > 0 then
      redis.call('ZREM', qk, unpack(gone))
      redis.call('ZREMRANGEBYSCORE', qd, '-inf', now)
    end
    ahead = redis.call('ZRANK', qk, lease)
    queued = ahead ~= false
    if not ahead then ahead = redis.call('ZCARD', qk) end
  end
  if ahead > 0 then
    local free = 0
    for _, c in ipairs(cands) do
      if not c.blocked then free = free + room(c) end
    end
    if free <= ahead then
      join_queue()
      return { 'full' }
    end
  end
end

local function choose(level)
  local w0, differ = level[1].weight, false
  for _, c in ipairs(level) do if c.weight ~= w0 then differ = true end end
  if differ then
    local total = 0
    for _, c in ipairs(level) do total = total + c.weight end
    if total > 0 then
      local target = random * total
      for _, c in ipairs(level) do
        target = target - c.weight
        if target < 0 then return c end
      end
      for i = #level, 1, -1 do if level[i].weight > 0 then return level[i] end end
    end
  end
  local scores = {}
  for from = 1, #level, 500 do
    local ids = {}
    for j = from, math.min(from + 499, #level) do ids[#ids + 1] = level[j].id end
    local got = redis.call('ZMSCORE', P .. 'lru', unpack(ids))
    for j = 1, #ids do scores[from + j - 1] = got[j] end
  end
  local best, best_score = nil, nil
  for i, c in ipairs(level) do
    local s = tonumber(scores[i]) or 0
    if not best or s < best_score then best, best_score = c, s end
  end
  return best
end

local i = 1
while not chosen and i <= #cands do
  local prio, level = cands[i].prio, {}
  while i <= #cands and cands[i].prio == prio do
    local c = cands[i]
    if not c.blocked and room(c) > 0 then level[#level + 1] = c end
    i = i + 1
  end
  if #level > 0 then chosen = choose(level) end
end

if not chosen then
  for _, c in ipairs(cands) do
    if not c.blocked then
      join_queue()
      return { 'full' }
    end
  end
  return { 'none' }
end

local exp = now + ttl
local function take(k)
  redis.call('ZADD', k, exp, lease)
  redis.call('PEXPIRE', k, ttl)
end
take(P .. 'ca:' .. chosen.id)
if first then
  if rpm > 0 then
    local rk = P .. 'rpm:' .. key_id
    redis.call('ZADD', rk, now, lease)
    redis.call('PEXPIRE', rk, 60000)
  end
  take(P .. 'ck:' .. key_id)
  take(P .. 'cu:' .. user_id)
end
redis.call('ZADD', P .. 'lru', redis.call('INCR', P .. 'seq'), chosen.id)
if sk then
  if bound and switched_from == '0' then
    redis.call('PEXPIRE', sk, session_ttl)
  else
    redis.call('SET', sk, chosen.id, 'PX', session_ttl)
  end
end
if queued then
  redis.call('ZREM', qk, lease)
  redis.call('ZREM', qd, lease)
end
return { 'picked', chosen.id, switched_from, reason }
