-- aiproxy state layout v1: end a request: give back its leases, bind a
-- session, mark its account. Also marks an account alone (lease '').
-- ARGV: prefix, now ms, lease, account (0 = none), user, key,
--       session ('' = none), bound account, session TTL ms,
--       mark kind ('' = none | u | l), mark account, until ms, reason
local P, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if lease ~= '' then
  if ARGV[4] ~= '0' then redis.call('ZREM', P .. 'ca:' .. ARGV[4], lease) end
  redis.call('ZREM', P .. 'cu:' .. ARGV[5], lease)
  redis.call('ZREM', P .. 'ck:' .. ARGV[6], lease)
end
if ARGV[7] ~= '' then
  redis.call('SET', P .. 's:' .. ARGV[6] .. ':' .. ARGV[7], ARGV[8], 'PX', ARGV[9])
end
local kind, untl, reason = ARGV[10], tonumber(ARGV[12]), ARGV[13]
if kind ~= '' and untl > now then
  local k = P .. kind .. ':' .. ARGV[11]
  local cur = redis.call('GET', k)
  -- A later reset already known wins (two 429s racing).
  if kind == 'u' or not cur or (tonumber(string.match(cur, '^(%-?%d+)')) or 0) <= untl then
    redis.call('SET', k, untl .. '|' .. reason, 'PX', untl - now)
  end
end
return 1
