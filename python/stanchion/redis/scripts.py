"""The Lua scripts behind RedisStorage: one per algorithm.

Each script decides one hit (or peek) for one client key atomically on the
server, with the server's clock, in one round trip whatever the number of
rates. It mirrors ``st_policy_decide`` in ``src/limit.c`` line for line;
only the representation of time differs:

* The clock is ``TIME`` in integer microseconds (about 2**51 today, exact
  in a Lua double). Window periods are whole microseconds, so window
  indexes and the time into a window are exact; results are reported in
  nanoseconds as the C engine does.
* Lua numbers are doubles, so every product that can pass 2**53 (the
  sliding window's ``prev * (P - e)`` against ``(L - cur - cost) * P``) is
  compared exactly by splitting the factors into 24-bit limbs, and every
  quotient is estimated in floating point, then corrected to the exact
  floor with those exact comparisons.
* Token bucket times are nanoseconds relative to the last write (the state
  keeps ``tat - t`` with ``t`` the write time in microseconds), so they stay
  small and exact instead of being 2**60-sized absolute nanoseconds.

Calling convention (the same for the three scripts)::

    EVALSHA sha 1 state_key now_us cost commit  cap_1 a_1 b_1 ... cap_n a_n b_n

``now_us`` is empty for the server clock; tests pass a fixed time instead
(and keys then live 10 minutes longer, so wall time spent by a test does
not expire state its fixed clock still needs). ``commit`` is ``0`` for a
peek, ``1`` for a hit, or for a hit a deadline: the server time in us
after which it must not be applied (its caller has given up waiting; see
``RedisLimiter`` for how the client knows the server's clock). A hit past
its deadline reads and writes nothing. Per rate, ``cap`` is the capacity; for the token
bucket ``a``/``b`` are the emission interval and the tolerance (burst *
interval) in ns, for the windows the period in us and in ns.

The state is one string key, ``struct.pack`` of doubles: the write time in
us, then the rate words (token bucket: ``tat - t`` in ns; fixed window:
window index, count; sliding window: window index, previous count, current
count). Every write sets an expiry of the time until the key is back to
full on every rate, so a key that would be forgotten is forgotten.

Reply: ``{allowed, limit, remaining, reset_after_ns, retry_after_ns,
clock_us}``, ``clock_us`` the server time it read; ``{-1, clock_us}`` for
a hit past its deadline.

With a penalty (``stanchion.Penalty``; ``_penalty.py`` states the rules,
``src/penalty.c`` is the in-process engine this mirrors) the call names a
second key, the client's penalty record under the same hash tag, and six
more arguments follow the rates::

    EVALSHA sha 2 state_key penalty_key now_us cost commit  <rates...>
        after within_us ban_us factor max_ban_us limit

The record is ``struct.pack`` of five doubles in us: the refusal window's
start, the refusals counted in it, the ban's end, the ban count and the
last ban's length; it expires when it holds nothing worth keeping. A
banned key is refused before its rates are read (``limit`` is the limit
reported then); a refused hit (not a peek) is counted and may start a
ban, in the same script, so the check, the count and the ban are atomic
with the hit. A banned key's refusal replies ``{0, limit, 0, left_ns,
left_ns, ban_count, clock_us}`` (seven items: ``Decision.banned``); a
hit that starts a ban ``{0, limit, 0, ban_ns, ban_ns, ban_ns, ban_count,
clock_us}`` (eight items), so its caller logs the ban once.
"""

from __future__ import annotations

import hashlib

_HELPERS = r"""
local B = 16777216
-- a * b as five base-2**24 limbs, most significant first; a, b integers
-- in [0, 2**72).
local function prod(a, b)
  local a0 = a % B; a = (a - a0) / B
  local a1 = a % B; local a2 = (a - a1) / B
  local b0 = b % B; b = (b - b0) / B
  local b1 = b % B; local b2 = (b - b1) / B
  local c0 = a0 * b0
  local c1 = a0 * b1 + a1 * b0
  local c2 = a0 * b2 + a1 * b1 + a2 * b0
  local c3 = a1 * b2 + a2 * b1
  local c4 = a2 * b2
  local k
  k = c0 % B; c1 = c1 + (c0 - k) / B; c0 = k
  k = c1 % B; c2 = c2 + (c1 - k) / B; c1 = k
  k = c2 % B; c3 = c3 + (c2 - k) / B; c2 = k
  k = c3 % B; c4 = c4 + (c3 - k) / B; c3 = k
  return c4, c3, c2, c1, c0
end
-- The sign of a*b - c*d, exactly.
local function cmp(a, b, c, d)
  local x, y = a * b, c * d
  if x < 4e15 and y < 4e15 then
    -- Both rounded products are below 2**52, so both are exact.
    if x < y then return -1 elseif x > y then return 1 else return 0 end
  end
  local x4, x3, x2, x1, x0 = prod(a, b)
  local y4, y3, y2, y1, y0 = prod(c, d)
  if x4 ~= y4 then return x4 < y4 and -1 or 1 end
  if x3 ~= y3 then return x3 < y3 and -1 or 1 end
  if x2 ~= y2 then return x2 < y2 and -1 or 1 end
  if x1 ~= y1 then return x1 < y1 and -1 or 1 end
  if x0 ~= y0 then return x0 < y0 and -1 or 1 end
  return 0
end
-- floor(a * b / d) for a, b >= 0 and d > 0, exactly.
local function fdiv(a, b, d)
  local q = math.floor(a * b / d)
  -- Past 2**52 a step of 1 is lost in rounding: keep the estimate (only
  -- spans beyond 52 days get there; it is then within a few ns).
  if q >= 4e15 then return q end
  if q < 0 then q = 0 end
  while q > 0 and cmp(q, d, a, b) > 0 do q = q - 1 end
  while cmp(q + 1, d, a, b) <= 0 do q = q + 1 end
  return q
end
-- floor(a / d) for 0 <= a and d > 0: a double division is exact enough
-- below 2**52.
local function div(a, d)
  if a < 4e15 then return math.floor(a / d) end
  return fdiv(a, 1, d)
end
"""

# The clock, the stored state, and the per-rate loop's accumulators:
#   ac, ar, ae     the binding rate if every rate allows (capacity,
#                  remaining, reset): fewest remaining, then longest reset;
#   dc, dr, de, dt the binding rate if one denies (capacity, remaining,
#                  reset, retry): the denying rate with the longest retry;
#   out, full      the state to write and the time until it is full (ns).
# W (state words per rate) is set before it.
_HEAD = r"""
local fixed = ARGV[1] ~= ''
local now
if fixed then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
local clock = now
local commit = ARGV[3]
if #commit > 1 and now > tonumber(commit) then return {-1, clock} end
local cost = tonumber(ARGV[2])
local pen = #KEYS == 2
local np = 0
local ps = nil
if pen then
  np = 6
  local raw = redis.call('GET', KEYS[2])
  if raw and #raw == 40 then ps = {struct.unpack('ddddd', raw)} end
  if ps and ps[3] > now then
    local left = (ps[3] - now) * 1000
    return {0, tonumber(ARGV[#ARGV]), 0, left, left, ps[4], clock}
  end
end
local n = (#ARGV - 3 - np) / 3
local fmt = string.rep('d', 1 + n * W)
local s = nil
local raw = redis.call('GET', KEYS[1])
if raw and #raw == 8 * (1 + n * W) then
  s = {struct.unpack(fmt, raw)}
  -- The state's own clock never runs backwards (a failover to a server
  -- whose clock is behind), as the in-process clock never does.
  if s[1] > now then now = s[1] end
end
local allowed = true
local ac, ar, ae = 0, 0, 0
local dc, dr, de, dt = 0, 0, 0, -1
local out, full = {now}, 0
-- Records rate i's verdict; the order of calls is the rates' order.
local function allow(i, c, rem, reset)
  if i == 1 or rem < ar or (rem == ar and reset > ae) then
    ac, ar, ae = c, rem, reset
  end
  if reset > full then full = reset end
end
local function deny(c, rem, reset, retry)
  allowed = false
  if retry > dt then dc, dr, de, dt = c, rem, reset, retry end
end
"""

# Per rate i (1-based) the state words are s[2 + (i - 1) * W ...].
_TOKEN_BUCKET = r"""
for i = 1, n do
  local c = tonumber(ARGV[1 + 3 * i])
  local I = tonumber(ARGV[2 + 3 * i])
  local T = tonumber(ARGV[3 + 3 * i])
  -- d = max(tat, now) - now, in ns
  local d = 0
  if s then
    d = s[1 + i] - (now - s[1]) * 1000
    if d < 0 then d = 0 end
  end
  local nd = d + cost * I
  if nd <= T then
    allow(i, c, div(T - nd, I), nd)
    out[1 + i] = nd
  else
    deny(c, div(T - d, I), d, nd - T)
  end
end
"""

_FIXED_WINDOW = r"""
for i = 1, n do
  local c = tonumber(ARGV[1 + 3 * i])
  local P = tonumber(ARGV[2 + 3 * i])
  local e = math.fmod(now, P)
  local idx = (now - e) / P
  local count = 0
  if s and s[2 * i] == idx then count = s[2 * i + 1] end
  local end_in = (P - e) * 1000
  if count + cost <= c then
    count = count + cost
    allow(i, c, c - count, end_in)
    out[2 * i] = idx
    out[2 * i + 1] = count
  else
    local reset = 0
    if count > 0 then reset = end_in end
    deny(c, c - count, reset, end_in)
  end
end
"""

_SLIDING_WINDOW = r"""
for i = 1, n do
  local L = tonumber(ARGV[1 + 3 * i])
  local P = tonumber(ARGV[2 + 3 * i])
  local Pn = tonumber(ARGV[3 + 3 * i])
  local e = math.fmod(now, P)
  local idx = (now - e) / P
  local prev, cur = 0, 0
  if s then
    local si = s[3 * i - 1]
    if si == idx then
      prev = s[3 * i]; cur = s[3 * i + 1]
    elseif si == idx - 1 then
      prev = s[3 * i + 1]
    end
  end
  -- allowed when prev * (P - e) / P + cur + cost <= L, exactly
  local X = L - cur - cost
  local wp = prev * (P - e)
  -- Below 2**52 the products, and the floor or ceiling of their
  -- quotients, are exact in doubles; past it, in limbs.
  local small = wp < 4e15 and L * P < 4e15
  local ok
  if small then
    ok = X >= 0 and wp <= X * P
  else
    ok = X >= 0 and cmp(prev, P - e, X, P) <= 0
  end
  local retry = 0
  if ok then
    cur = cur + cost
  elseif X >= 0 then
    -- wait in this window until prev's weight has shrunk
    retry = (Pn - fdiv(X, Pn, prev)) - e * 1000
  else
    -- wait for the next window, where cur becomes prev
    local q = fdiv(L - cost, Pn, cur)
    local e2 = 0
    if q < Pn then e2 = Pn - q end
    retry = (P - e) * 1000 + e2
  end
  local w
  if small then
    w = math.ceil(wp / P)
  else
    w = fdiv(prev, P - e, P)
    if cmp(w, P, prev, P - e) < 0 then w = w + 1 end
  end
  local left = L - cur - w
  if left < 0 then left = 0 end
  local reset = 0
  if cur > 0 then
    reset = ((P - e) + P) * 1000
  elseif prev > 0 then
    reset = (P - e) * 1000
  end
  if ok then
    allow(i, L, left, reset)
    out[3 * i - 1] = idx
    out[3 * i] = prev
    out[3 * i + 1] = cur
  else
    deny(L, left, reset, retry)
  end
end
"""

# Denied: nothing is written. Allowed: a hit writes every rate's new
# state at once, with an expiry of when the key is back to full.
_TAIL = r"""
if not allowed then
  if pen and commit ~= '0' then
    local b = #ARGV - 6
    local K = tonumber(ARGV[b + 1])
    local Wi = tonumber(ARGV[b + 2])
    local P = tonumber(ARGV[b + 3])
    local F = tonumber(ARGV[b + 4])
    local M = tonumber(ARGV[b + 5])
    if not ps then ps = {0, 0, 0, 0, 0} end
    if not (ps[2] > 0 and now - ps[1] < Wi) then ps[1] = now; ps[2] = 0 end
    ps[2] = ps[2] + 1
    local dur = 0
    if ps[2] > K then
      local bans = ps[4]
      if not (bans > 0 and now < ps[3] + math.max(ps[5], Wi)) then bans = 0 end
      if bans < 2147483647 then bans = bans + 1 end
      dur = P * F ^ (bans - 1)
      if not (dur < M) then dur = M end
      dur = math.max(P, math.floor(dur + 0.5))
      ps[3] = now + dur; ps[4] = bans; ps[5] = dur; ps[2] = 0
    end
    local keep = 0
    if ps[4] > 0 then keep = ps[3] + math.max(ps[5], Wi) - now end
    if ps[2] > 0 then keep = math.max(keep, ps[1] + Wi - now) end
    local ms = math.ceil(keep / 1000)
    if ms < 1 then ms = 1 end
    if fixed then ms = ms + 600000 end
    redis.call('SET', KEYS[2], struct.pack('ddddd', ps[1], ps[2], ps[3], ps[4], ps[5]), 'PX', ms)
    if dur > 0 then
      return {0, tonumber(ARGV[#ARGV]), 0, dur * 1000, dur * 1000, dur * 1000, ps[4], clock}
    end
  end
  return {0, dc, dr, de, dt, clock}
end
if commit ~= '0' then
  local ms = math.ceil(full / 1000000)
  if ms < 1 then ms = 1 end
  if fixed then ms = ms + 600000 end
  redis.call('SET', KEYS[1], struct.pack(fmt, unpack(out)), 'PX', ms)
end
return {1, ac, ar, ae, 0, clock}
"""

_LOOPS = {
    "token_bucket": (1, _TOKEN_BUCKET),
    "fixed_window": (2, _FIXED_WINDOW),
    "sliding_window": (3, _SLIDING_WINDOW),
}


def _build(algorithm: str) -> str:
    words, loop = _LOOPS[algorithm]
    return (
        f"-- stanchion {algorithm} v3\nlocal W = {words}\n"
        + _HELPERS.strip()
        + "\n"
        + _HEAD.strip()
        + "\n"
        + loop.strip()
        + "\n"
        + _TAIL.strip()
        + "\n"
    )


# A client's penalty record and the server's clock (or the fixed test
# clock in ARGV[1]): ``{now_us}`` or ``{now_us, record}``.
_BAN_STATE = r"""
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
local raw = redis.call('GET', KEYS[1])
if raw and #raw == 40 then return {now, raw} end
return {now}
"""
BAN_STATE: tuple[bytes, bytes] = (
    _BAN_STATE.encode(),
    hashlib.sha1(_BAN_STATE.encode()).hexdigest().encode(),
)

# ``_BAN_STATE`` that also deletes the record, in the same script: the
# state it reports is the one it removed, so no hit of another client can
# land between the look and the delete (``RedisLimiter.lift``).
_LIFT = r"""
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
-- Whatever is there goes, even a value of another type (GET would fail
-- on it and leave it in place).
local raw = false
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  raw = redis.call('GET', KEYS[1])
end
redis.call('UNLINK', KEYS[1])
if raw and #raw == 40 then return {now, raw} end
return {now}
"""
LIFT: tuple[bytes, bytes] = (
    _LIFT.encode(),
    hashlib.sha1(_LIFT.encode()).hexdigest().encode(),
)

SCRIPTS: dict[str, tuple[bytes, bytes]] = {}
"""algorithm -> (script source, its SHA1 in hex), both as bytes."""

for _name in _LOOPS:
    _src = _build(_name).encode()
    SCRIPTS[_name] = (_src, hashlib.sha1(_src).hexdigest().encode())
