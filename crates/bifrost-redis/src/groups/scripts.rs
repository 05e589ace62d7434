//! The consumer groups' Lua scripts. Each operation is one script, so it is atomic across
//! every node; each finds its group by kind and name itself (`{'missing'}` when there is
//! none), so a group deleted or recreated meanwhile is never half-seen.
//!
//! A group `g` (a number from `{prefix}:group-seq`, never reused) keeps:
//! `{base}` (hash: settings, `read_to`, counters), `{base}:rows` (sorted set of the
//! positions of its unsettled events read from the log), `{base}:row` (position → row:
//! `failures|leased|due|nonce|replay|stream|reason`), `{base}:dead` and `{base}:dl` (the
//! dead letters: position → `attempts|parked_at|event_id|stream|type|reason`) and
//! `{base}:consumers` (name → last fetch). Times are Redis's clock, in microseconds.

use std::sync::LazyLock;

use redis::Script;

/// Shared by every script: finding the group, rows, backoff and parking.
const COMMON: &str = r#"
local kinds, prefix, name = KEYS[1], ARGV[1], ARGV[2]
local id = redis.call('HGET', kinds, name)
if not id then return {'missing'} end
local base = prefix .. ':g:' .. id
local rows_key, row_key, dead_key, dl_key = base .. ':rows', base .. ':row', base .. ':dead', base .. ':dl'
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local function fmt(n) return string.format('%d', n) end
local function parse(text)
  local f, l, d, n, r, s, reason = string.match(text, '^(%d+)|(%d)|(%-?%d+)|(%d+)|(%d)|([^|]*)|(.*)$')
  return {failures = tonumber(f), leased = l == '1', due = tonumber(d), nonce = n, replay = r == '1',
          stream = s, reason = reason}
end
local function store(position, row)
  local text = fmt(row.failures) .. '|' .. (row.leased and '1' or '0') .. '|' .. fmt(row.due) .. '|' ..
    row.nonce .. '|' .. (row.replay and '1' or '0') .. '|' .. row.stream .. '|' .. (row.reason or '')
  redis.call('HSET', row_key, position, text)
end
local function remove(position)
  redis.call('ZREM', rows_key, position)
  redis.call('HDEL', row_key, position)
end
local settings = redis.call('HMGET', base, 'ack', 'attempts', 'bkind', 'binit', 'bmax', 'jitter', 'inflight',
  'ordered', 'treason')
local ack_ms, max_attempts = tonumber(settings[1]), tonumber(settings[2])
local function backoff(failed)
  local delay = tonumber(settings[4])
  if settings[3] == 'e' then
    local doublings = math.min(math.max(failed - 1, 0), 31)
    delay = math.min(delay * 2 ^ doublings, tonumber(settings[5]))
  end
  if settings[6] == '1' and delay > 0 then
    local half = delay / 2
    delay = half + half * math.random()
  end
  return math.floor(delay * 1000)
end
-- The event type in a stored event's body (after the stream and the aggregate type).
local function event_type(member)
  local at = 97
  for _ = 1, 2 do at = at + 2 + string.byte(member, at) * 256 + string.byte(member, at + 1) end
  local len = string.byte(member, at) * 256 + string.byte(member, at + 1)
  return string.sub(member, at + 2, at + 1 + len)
end
-- Moves a row to the dead letters (or drops it when its event is gone).
local function park(position, row, reason)
  remove(position)
  local found = redis.call('ZRANGEBYSCORE', KEYS[2], position, position)
  if not found[1] then return end
  redis.call('ZADD', dead_key, position, position)
  redis.call('HSET', dl_key, position, fmt(row.failures) .. '|' .. fmt(now) .. '|' .. string.sub(found[1], 1, 36) ..
    '|' .. row.stream .. '|' .. event_type(found[1]) .. '|' .. reason)
end
-- A failed delivery: retried after `delay` (the backoff when nil) or parked at the last attempt.
local function fail(position, row, delay, reason)
  row.failures = row.failures + 1
  row.leased = false
  row.reason = reason
  if row.failures >= max_attempts then
    park(position, row, reason)
  else
    row.due = now + (delay or backoff(row.failures))
    store(position, row)
  end
end
-- Expires overdue leases; returns every row in position order, parsed.
local function sweep()
  local positions = redis.call('ZRANGE', rows_key, 0, -1)
  local out = {}
  local expired = 0
  for _, position in ipairs(positions) do
    local text = redis.call('HGET', row_key, position)
    local row = text and parse(text)
    if row then
      if row.leased and row.due <= now then
        expired = expired + 1
        fail(position, row, nil, settings[9])
      end
      if redis.call('HEXISTS', row_key, position) == 1 then
        out[#out + 1] = {position, row}
      end
    end
  end
  if expired > 0 then
    redis.call('HINCRBY', base, 'timeouts', expired)
    redis.call('PUBLISH', prefix .. ':groups', id)
  end
  return out
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// KEYS: kinds hash, log, group sequence. ARGV: prefix, name, config JSON, ack ms, max
/// attempts, backoff kind (`f`/`e`), initial ms, max ms, jitter (0/1), max in flight,
/// ordered (0/1), timeout reason, start position. Creates (`{'created'}`) or updates
/// (`{'updated'}`) the settings; the start position counts only at creation.
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kinds, prefix, name = KEYS[1], ARGV[1], ARGV[2]
local id = redis.call('HGET', kinds, name)
local outcome = 'updated'
if not id then
  id = redis.call('INCR', KEYS[3])
  redis.call('HSET', kinds, name, id)
  local time = redis.call('TIME')
  local base = prefix .. ':g:' .. id
  redis.call('HSET', base, 'name', name, 'read_to', ARGV[13], 'redeliveries', '0', 'timeouts', '0',
    'created', string.format('%d', tonumber(time[1]) * 1000000 + tonumber(time[2])))
  outcome = 'created'
end
local base = prefix .. ':g:' .. id
redis.call('HSET', base, 'config', ARGV[3], 'ack', ARGV[4], 'attempts', ARGV[5], 'bkind', ARGV[6], 'binit', ARGV[7],
  'bmax', ARGV[8], 'jitter', ARGV[9], 'inflight', ARGV[10], 'ordered', ARGV[11], 'treason', ARGV[12])
redis.call('PUBLISH', prefix .. ':groups', id)
return {outcome}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name. Returns `{'ok', config, read_to, rows,
/// {position of each row}}` (the positions only when asked: ARGV[3] = `rows`).
pub(crate) static INFO: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local about = redis.call('HMGET', base, 'config', 'read_to')
local positions = {}
if ARGV[3] == 'rows' then positions = redis.call('ZRANGE', rows_key, 0, -1) end
return {'ok', about[1], about[2], redis.call('ZCARD', rows_key), positions}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, the `read_to` the feed read from, the new
/// `read_to`, then position and stream of each matching event. Applies only if no other
/// feed moved `read_to` meanwhile.
pub(crate) static FEED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', base, 'read_to') ~= ARGV[3] then return {'stale'} end
for i = 5, #ARGV, 2 do
  redis.call('ZADD', rows_key, ARGV[i], ARGV[i])
  redis.call('HSET', row_key, ARGV[i], '0|0|0|0|0|' .. ARGV[i + 1] .. '|')
end
redis.call('HSET', base, 'read_to', ARGV[4])
return {'ok'}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, consumer, max, per stream, nonce base.
/// Returns `{'ok', {position, nonce, attempt, …}, next}`: `next` is when the earliest row
/// that waits (a retry or a lease's deadline) is due, in µs from now (-1: none).
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local consumer, max, per_stream, nonce = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ordered = settings[8] == '1'
local rows = sweep()
redis.call('HSET', base .. ':consumers', consumer, fmt(now))
local in_flight = 0
local blocked = {}
for _, entry in ipairs(rows) do
  local row = entry[2]
  if row.leased then
    in_flight = in_flight + 1
    if not row.replay then blocked[row.stream] = true end
  end
end
local limit = tonumber(settings[7])
local taken = {}
local out = {}
local next_due = -1
local redelivered = 0
for _, entry in ipairs(rows) do
  local position, row = entry[1], entry[2]
  if not row.leased then
    local eligible = row.due <= now
    if ordered and not row.replay then
      local t = taken[row.stream]
      if blocked[row.stream] then
        eligible = false
      elseif t and (t.count >= per_stream or t.last ~= true) then
        eligible = false
      end
    end
    if eligible and #out / 3 < max and in_flight < limit then
      row.leased = true
      row.due = now + ack_ms * 1000
      nonce = nonce + 1
      row.nonce = fmt(nonce)
      store(position, row)
      in_flight = in_flight + 1
      if row.failures > 0 then redelivered = redelivered + 1 end
      out[#out + 1] = position
      out[#out + 1] = row.nonce
      out[#out + 1] = row.failures + 1
      local t = taken[row.stream] or {count = 0}
      t.count = t.count + 1
      t.last = true
      taken[row.stream] = t
    else
      if ordered and not row.replay then
        blocked[row.stream] = true
      end
      if row.due > now and (next_due < 0 or row.due - now < next_due) then next_due = row.due - now end
    end
  elseif next_due < 0 or row.due - now < next_due then
    next_due = math.max(row.due - now, 0)
  end
end
if redelivered > 0 then redis.call('HINCRBY', base, 'redeliveries', redelivered) end
return {'ok', out, next_due}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, op (`ack`, `retry`, `park`, `release`),
/// delay µs (-1: the backoff), reason, then position and nonce of each lease. Returns
/// `{'ok', {index of each lease not held, …}}` (1-based).
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local op, delay, reason = ARGV[3], tonumber(ARGV[4]), ARGV[5]
if delay < 0 then delay = nil end
local expired = {}
local settled = 0
for i = 6, #ARGV, 2 do
  local position, nonce = ARGV[i], ARGV[i + 1]
  local text = redis.call('HGET', row_key, position)
  local row = text and parse(text)
  if row and row.leased and row.nonce == nonce and row.due > now then
    settled = settled + 1
    if op == 'ack' then
      remove(position)
    elseif op == 'retry' then
      fail(position, row, delay, reason)
    elseif op == 'park' then
      row.failures = row.failures + 1
      park(position, row, reason)
    else
      row.leased = false
      row.due = now + delay
      store(position, row)
    end
  else
    expired[#expired + 1] = (i - 4) / 2
  end
end
if settled > 0 then redis.call('PUBLISH', prefix .. ':groups', id) end
return {'ok', expired}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name. Returns `{'ok', config, created, read_to,
/// redeliveries, timeouts, checkpoint, rows, in_flight, waiting, parked, {consumer,
/// last_seen, …}}` after expiring overdue leases.
pub(crate) static STATUS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local rows = sweep()
local about = redis.call('HMGET', base, 'config', 'created', 'read_to', 'redeliveries', 'timeouts')
local checkpoint = tonumber(about[3])
local in_flight, waiting = 0, 0
for _, entry in ipairs(rows) do
  local position, row = tonumber(entry[1]), entry[2]
  if not row.replay and position - 1 < checkpoint then checkpoint = position - 1 end
  if row.leased then in_flight = in_flight + 1 elseif row.due > now then waiting = waiting + 1 end
end
return {'ok', about[1], about[2], about[3], about[4], about[5], fmt(checkpoint), #rows, in_flight, waiting,
  redis.call('ZCARD', dead_key), redis.call('HGETALL', base .. ':consumers')}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, after (exclusive), limit. Returns `{'ok',
/// {position, dead letter, …}}`.
pub(crate) static DEAD_LETTERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local positions = redis.call('ZRANGEBYSCORE', dead_key, '(' .. ARGV[3], '+inf', 'LIMIT', 0, ARGV[4])
local out = {}
for _, position in ipairs(positions) do
  out[#out + 1] = position
  out[#out + 1] = redis.call('HGET', dl_key, position) or ''
end
return {'ok', out}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, mode (`all`, `ids`, `upto`), then the ids or
/// the position. Replays the selected dead letters whose event is still stored (dropping
/// the others); returns `{'ok', replayed}`.
pub(crate) static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local mode = ARGV[3]
local positions
if mode == 'upto' then
  positions = redis.call('ZRANGEBYSCORE', dead_key, '-inf', ARGV[4])
else
  positions = redis.call('ZRANGE', dead_key, 0, -1)
end
local wanted = {}
for i = 4, #ARGV do wanted[ARGV[i]] = true end
local replayed = 0
for _, position in ipairs(positions) do
  local text = redis.call('HGET', dl_key, position) or ''
  local _, _, event_id, stream = string.match(text, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
  if mode ~= 'ids' or wanted[event_id] then
    redis.call('ZREM', dead_key, position)
    redis.call('HDEL', dl_key, position)
    if redis.call('ZRANGEBYSCORE', KEYS[2], position, position)[1] then
      redis.call('ZADD', rows_key, position, position)
      redis.call('HSET', row_key, position, '0|0|0|0|1|' .. stream .. '|')
      replayed = replayed + 1
    end
  end
end
if replayed > 0 then redis.call('PUBLISH', prefix .. ':groups', id) end
return {'ok', replayed}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, event id. Returns `{'ok', 1}` when a dead
/// letter of that event was removed, `{'ok', 0}` when there was none.
pub(crate) static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
for _, position in ipairs(redis.call('ZRANGE', dead_key, 0, -1)) do
  local text = redis.call('HGET', dl_key, position) or ''
  local _, _, event_id = string.match(text, '^([^|]*)|([^|]*)|([^|]*)|')
  if event_id == ARGV[3] then
    redis.call('ZREM', dead_key, position)
    redis.call('HDEL', dl_key, position)
    return {'ok', 1}
  end
end
return {'ok', 0}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, then positions. Drops those rows (events
/// that no longer match the filter, or that were deleted from the log).
pub(crate) static DROP_ROWS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
for i = 3, #ARGV do remove(ARGV[i]) end
redis.call('PUBLISH', prefix .. ':groups', id)
return {'ok'}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name, then position and stream of each event to
/// add as a row (one that matches a changed filter only now), unless it is one already.
pub(crate) static ADD_ROWS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
for i = 3, #ARGV, 2 do
  if not redis.call('ZSCORE', rows_key, ARGV[i]) then
    redis.call('ZADD', rows_key, ARGV[i], ARGV[i])
    redis.call('HSET', row_key, ARGV[i], '0|0|0|0|0|' .. ARGV[i + 1] .. '|')
  end
end
redis.call('PUBLISH', prefix .. ':groups', id)
return {'ok'}
"#,
    )
});

/// KEYS: kinds hash, log. ARGV: prefix, name. Removes the group and everything it keeps.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('DEL', base, rows_key, row_key, dead_key, dl_key, base .. ':consumers')
redis.call('HDEL', kinds, name)
redis.call('PUBLISH', prefix .. ':groups', id)
return {'ok'}
"#,
    )
});
