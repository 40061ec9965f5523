"""The Lua scripts of :mod:`vmqtw.cluster.redis_metadata` and the key layout.

Every key starts with the prefix ``{<cluster name>}``. The braces make it a Redis
Cluster hash tag, so all keys of one vmqtw cluster live in one slot and the scripts
may touch keys derived from their arguments.

============================== ======= ==================================================
key                            type    content
============================== ======= ==================================================
``P:members``                  ZSET    node -> expiry (ms, Redis ``TIME`` + node timeout)
``P:node:<node>``              HASH    addr, incarnation
``P:routes:<node>``            HASH    topic filter -> 1, owned by <node>
``P:rlog``                     STREAM  node, op (add | del | reset | leave), filter
``P:owner:<len(mp)>:<mp>:<id>`` HASH   node, epoch
``P:retain``                   HASH    <len(mp)>:<mp>:<topic> -> message
``P:retlog``                   STREAM  key (as in P:retain), op (set | del), msg
``P:sess:<len(mp)>:<mp>:<id>`` HASH    topic filter -> subinfo
============================== ======= ==================================================

Time inside the scripts is Redis ``TIME``: the scripts run on the one server, so every
node's expiry is measured on one clock.
"""
from __future__ import annotations

# Shared Lua prologue: now in milliseconds and microseconds from the server clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: members, node:<me>, rlog.  ARGV: me, timeout_ms, prefix, rlog maxlen.
#: Refreshes this node's expiry, reaps expired members (their record and routes are
#: deleted and a reset is logged so followers drop them) and returns
#: {now, known, {name, expiry, addr, ...}} where known = 0 means this node's record
#: is gone from Redis (restart, or reaped while it was slow): it must re-announce.
HEARTBEAT = _NOW + """
-- An unknown node is not added here: ANNOUNCE adds it together with its routes, so
-- no snapshot ever sees a member without its routes.
local known = redis.call('EXISTS', KEYS[2])
if known == 1 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
for _, n in ipairs(dead) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('DEL', ARGV[3] .. ':node:' .. n, ARGV[3] .. ':routes:' .. n)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
             'node', n, 'op', 'reset', 'filter', '')
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local members = {}
for i = 1, #live, 2 do
  local addr = redis.call('HGET', ARGV[3] .. ':node:' .. live[i], 'addr') or ''
  table.insert(members, live[i])
  table.insert(members, live[i + 1])
  table.insert(members, addr)
end
return {now, known, members}
"""

#: KEYS: members, node:<me>, routes:<me>, rlog.
#: ARGV: me, timeout_ms, addr, incarnation, rlog maxlen, filter...
#: (Re)registers this node and replaces its routes, then logs one reset: followers
#: re-read the node's routes instead of replaying one entry per filter.
ANNOUNCE = _NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], 'addr', ARGV[3], 'incarnation', ARGV[4])
redis.call('DEL', KEYS[3])
for i = 6, #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], 1)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*',
           'node', ARGV[1], 'op', 'reset', 'filter', '')
return now
"""

#: KEYS: members, node:<me>, routes:<me>, rlog.  ARGV: me, rlog maxlen.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*',
           'node', ARGV[1], 'op', 'leave', 'filter', '')
return 1
"""

#: KEYS: routes:<me>, rlog.  ARGV: me, filter, rlog maxlen.
#: Logged only when the hash really changed, so repeats cost no log entries.
ROUTE_ADD = """
if redis.call('HSET', KEYS[1], ARGV[2], 1) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
             'node', ARGV[1], 'op', 'add', 'filter', ARGV[2])
end
return 1
"""

ROUTE_DEL = """
if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
             'node', ARGV[1], 'op', 'del', 'filter', ARGV[2])
end
return 1
"""

#: KEYS: members, rlog.  ARGV: prefix.
#: A consistent snapshot: the last rlog id, then {name, {filters}} per member.
SNAPSHOT = """
local e = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if #e > 0 then out[1] = e[1][1] end
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  table.insert(out, n)
  table.insert(out, redis.call('HKEYS', ARGV[1] .. ':routes:' .. n))
end
return out
"""

#: KEYS: owner key.  ARGV: me.  Returns {previous owner or '', new epoch}.
#: The epoch is max(previous + 1, Redis time in microseconds): strictly increasing for
#: the key, and still larger than every earlier epoch after Redis lost its data.
CLAIM = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = redis.call('HMGET', KEYS[1], 'node', 'epoch')
local epoch = math.max((tonumber(prev[2]) or 0) + 1, now_us)
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', string.format('%.0f', epoch))
return {prev[1] or '', epoch}
"""

#: KEYS: owner key.  ARGV: me, epoch.  Releases only if (me, epoch) still owns it; the
#: epoch stays, so later claims keep increasing.
RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'node', '')
  return 1
end
return 0
"""

#: KEYS: retain, retlog.  ARGV: field, message (absent = delete), retlog maxlen.
RETAIN = """
if #ARGV == 3 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'key', ARGV[1], 'op', 'set',
             'msg', ARGV[2])
elseif redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'key', ARGV[1], 'op', 'del',
             'msg', '')
end
return 1
"""

#: KEYS: retain, retlog.  Returns {last retlog id, field, message, ...}.
RETAINED_SNAPSHOT = """
local e = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if #e > 0 then out[1] = e[1][1] end
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, v) end
return out
"""
