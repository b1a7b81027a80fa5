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
not expire state its fixed clock still needs). ``commit`` is ``1`` for a
hit and ``0`` for a peek. Per rate, ``cap`` is the capacity; for the token
bucket ``a``/``b`` are the emission interval and the tolerance (burst *
interval) in ns, for the windows the period in us and in ns.

The state is one string key, ``struct.pack`` of doubles: the write time in
us, then the rate words (token bucket: ``tat - t`` in ns; fixed window:
window index, count; sliding window: window index, previous count, current
count). Every write sets an expiry of the time until the key is back to
full on every rate, so a key that would be forgotten is forgotten.

Reply: ``{allowed, limit, remaining, reset_after_ns, retry_after_ns}``.
"""

from __future__ import annotations

import hashlib

_COMMON_HEAD = r"""
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
-- ceil(a * b / d) for a, b >= 0 and d > 0, exactly.
local function cdiv(a, b, d)
  local q = fdiv(a, b, d)
  if cmp(q, d, a, b) < 0 then q = q + 1 end
  return q
end

local fixed = ARGV[1] ~= ''
local now
if fixed then
  now = tonumber(ARGV[1])
else
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
local commit = ARGV[3] == '1'
local n = (#ARGV - 3) / 3
local fmt = string.rep('d', 1 + n * W)
local s = nil
local raw = redis.call('GET', KEYS[1])
if raw and #raw == 8 * (1 + n * W) then
  s = {struct.unpack(fmt, raw)}
  -- The state's own clock never runs backwards (a failover to a server
  -- whose clock is behind), as the in-process clock never does.
  if s[1] > now then now = s[1] end
end
local cap, ok, rem, reset, retry, nxt = {}, {}, {}, {}, {}, {}
local allowed = true
"""

# Per rate i (1-based), the state words start at s[2 + (i - 1) * W].
_TOKEN_BUCKET = (
    r"""
local W = 1
"""
    + _COMMON_HEAD
    + r"""
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
  cap[i] = c
  if nd <= T then
    ok[i] = true
    rem[i] = fdiv(T - nd, 1, I)
    reset[i] = nd
    retry[i] = 0
    nxt[i] = nd
  else
    ok[i] = false
    allowed = false
    rem[i] = fdiv(T - d, 1, I)
    reset[i] = d
    retry[i] = nd - T
  end
end
"""
    + "@TAIL@"
)

_FIXED_WINDOW = (
    r"""
local W = 2
"""
    + _COMMON_HEAD
    + r"""
for i = 1, n do
  local c = tonumber(ARGV[1 + 3 * i])
  local P = tonumber(ARGV[2 + 3 * i])
  local e = math.fmod(now, P)
  local idx = (now - e) / P
  local count = 0
  if s and s[2 * i] == idx then count = s[2 * i + 1] end
  local end_in = (P - e) * 1000
  cap[i] = c
  if count + cost <= c then
    ok[i] = true
    count = count + cost
    retry[i] = 0
    nxt[i] = {idx, count}
  else
    ok[i] = false
    allowed = false
    retry[i] = end_in
  end
  rem[i] = c - count
  if count > 0 then reset[i] = end_in else reset[i] = 0 end
end
"""
    + "@TAIL@"
)

_SLIDING_WINDOW = (
    r"""
local W = 3
"""
    + _COMMON_HEAD
    + r"""
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
  cap[i] = L
  if X >= 0 and cmp(prev, P - e, X, P) <= 0 then
    ok[i] = true
    cur = cur + cost
    retry[i] = 0
    nxt[i] = {idx, prev, cur}
  else
    ok[i] = false
    allowed = false
    if X >= 0 then
      -- wait in this window until prev's weight has shrunk
      local q = fdiv(X, Pn, prev)
      retry[i] = (Pn - q) - e * 1000
    else
      -- wait for the next window, where cur becomes prev
      local q = fdiv(L - cost, Pn, cur)
      local e2 = 0
      if q < Pn then e2 = Pn - q end
      retry[i] = (P - e) * 1000 + e2
    end
  end
  local left = L - cur - cdiv(prev, P - e, P)
  if left < 0 then left = 0 end
  rem[i] = left
  if cur > 0 then
    reset[i] = ((P - e) + P) * 1000
  elseif prev > 0 then
    reset[i] = (P - e) * 1000
  else
    reset[i] = 0
  end
end
"""
    + "@TAIL@"
)

# The binding rate exactly as st_policy_decide picks it, then the write.
_TAIL = r"""
local b = 0
for i = 1, n do
  if b == 0 then
    if allowed or not ok[i] then b = i end
  elseif allowed then
    if rem[i] < rem[b] or (rem[i] == rem[b] and reset[i] > reset[b]) then
      b = i
    end
  elseif not ok[i] and retry[i] > retry[b] then
    b = i
  end
end
if allowed and commit then
  local out = {now}
  local full = 0
  for i = 1, n do
    @PACK@
    if reset[i] > full then full = reset[i] end
  end
  local ms = math.ceil(full / 1000000)
  if ms < 1 then ms = 1 end
  if fixed then ms = ms + 600000 end
  redis.call('SET', KEYS[1], struct.pack(fmt, unpack(out)), 'PX', ms)
end
return {allowed and 1 or 0, cap[b], rem[b], reset[b], retry[b]}
"""

_PACK = {
    "token_bucket": "out[#out + 1] = nxt[i]",
    "fixed_window": "out[#out + 1] = nxt[i][1]; out[#out + 1] = nxt[i][2]",
    "sliding_window": (
        "out[#out + 1] = nxt[i][1]; out[#out + 1] = nxt[i][2]; "
        "out[#out + 1] = nxt[i][3]"
    ),
}

_BODIES = {
    "token_bucket": _TOKEN_BUCKET,
    "fixed_window": _FIXED_WINDOW,
    "sliding_window": _SLIDING_WINDOW,
}


def _build(algorithm: str) -> str:
    tail = _TAIL.replace("@PACK@", _PACK[algorithm])
    body = _BODIES[algorithm].replace("@TAIL@", tail)
    return f"-- stanchion {algorithm} v1\n{body.strip()}\n"


SCRIPTS: dict[str, tuple[bytes, bytes]] = {}
"""algorithm -> (script source, its SHA1 in hex), both as bytes."""

for _name in _BODIES:
    _src = _build(_name).encode()
    SCRIPTS[_name] = (_src, hashlib.sha1(_src).hexdigest().encode())
