-- aiproxy state layout v1: extend the live leases of a node's long requests.
-- ARGV: prefix, new expiry ms, ttl ms, then (lease, account, user, key) per request
local P, exp, ttl = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 4 do
  local lease = ARGV[i]
  for j, tag in ipairs({ 'ca:', 'cu:', 'ck:' }) do
    local id = ARGV[i + j]
    if id ~= '0' then
      local k = P .. tag .. id
      if redis.call('ZADD', k, 'XX', 'CH', exp, lease) > 0 then redis.call('PEXPIRE', k, ttl) end
    end
  end
end
return 1
