//! The Lua scripts and the key names they work on. Redis runs a script alone, start to
//! end, so each one is a transaction without locks; the append script is the only place
//! that moves the head.
//!
//! Numbers that go back into Redis are formatted with `%d` (`tostring` would print a
//! microsecond timestamp as `1.7e+15`). A script checks everything before it writes:
//! Redis does not roll a script back when it fails half-way.

use std::sync::LazyLock;

use redis::Script;

/// The names of every key and channel of one prefix. Stream names are embedded as they are:
/// they are validated (`A-Z a-z 0-9 _ . : @ -`), so no two streams share a key.
pub(crate) struct Keys {
    pub(crate) prefix: String,
    /// The last position written (a string); never decreases, even when events are deleted.
    pub(crate) head: String,
    /// The last `recorded_at` given out, so that it never decreases across the log.
    pub(crate) clock: String,
    /// The log: a sorted set, score = position, member = the stored event.
    pub(crate) log: String,
    /// Event id → position.
    pub(crate) ids: String,
    /// The names of the live streams (score 0, so in byte order).
    pub(crate) streams: String,
    /// `{stream_meta}{name}`: a hash `v` (version), `s` (0 live, 1 soft-deleted, 2
    /// tombstoned), `t` (aggregate type), `c` and `u` (created, updated).
    pub(crate) stream_meta: String,
    /// `{stream_positions}{name}`: a list, the position of each version in order.
    pub(crate) stream_positions: String,
    /// The channel the append script announces each new head on.
    pub(crate) head_channel: String,
    /// `{state_values}{scope}`: a hash key → value; `{state_keys}{scope}`: its keys, sorted.
    pub(crate) state_values: String,
    pub(crate) state_keys: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            head: format!("{prefix}:head"),
            clock: format!("{prefix}:clock"),
            log: format!("{prefix}:log"),
            ids: format!("{prefix}:ids"),
            streams: format!("{prefix}:streams"),
            stream_meta: format!("{prefix}:stream:"),
            stream_positions: format!("{prefix}:positions:"),
            head_channel: format!("{prefix}:head"),
            state_values: format!("{prefix}:state:"),
            state_keys: format!("{prefix}:state-keys:"),
        }
    }

    pub(crate) fn meta(&self, stream: &str) -> String {
        format!("{}{stream}", self.stream_meta)
    }

    pub(crate) fn positions(&self, stream: &str) -> String {
        format!("{}{stream}", self.stream_positions)
    }
}

/// Appends a group of requests, each atomic on its own, in order.
///
/// KEYS: head, clock, log, ids, streams. ARGV: stream meta prefix, stream positions prefix,
/// head channel, the number of requests, then per request its number of streams and per
/// stream: name, expected kind (`a` any, `n` no stream, `e` exists, `x` exact), expected
/// version, aggregate type (if the stream is new), number of events, then per event its id
/// and body.
///
/// A request is refused whole when any of its ids is already stored (`{'retry'}`: another
/// writer stored it since the caller looked, so the caller decides again whether it is a
/// replay), when a stream is tombstoned (`{'deleted', index}`) or when expected versions
/// fail (`{'conflict', {index, actual or -1, …}}`). Otherwise every event gets the next
/// position and its stream's next version (`{'ok', {after, first_position, …}}`).
/// Returns `{head, recorded_at, replies}` and publishes the new head when it moved.
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local head_key, clock_key, log_key, ids_key, names_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local meta_prefix, positions_prefix, channel = ARGV[1], ARGV[2], ARGV[3]
local head = tonumber(redis.call('GET', head_key) or '0')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local last = tonumber(redis.call('GET', clock_key) or '0')
if now < last then now = last end
local stamp = string.format('%020d', now)
local at = 4
local requests = tonumber(ARGV[at]); at = at + 1
local replies = {}
local wrote = false
for r = 1, requests do
  local count = tonumber(ARGV[at]); at = at + 1
  local streams = {}
  for s = 1, count do
    local n = tonumber(ARGV[at + 4])
    streams[s] = {name = ARGV[at], kind = ARGV[at + 1], expected = tonumber(ARGV[at + 2]),
                  aggregate = ARGV[at + 3], n = n, first = at + 5}
    at = at + 5 + 2 * n
  end
  local verdict = nil
  for s = 1, count do
    local st = streams[s]
    for e = 0, st.n - 1 do
      if redis.call('HEXISTS', ids_key, ARGV[st.first + 2 * e]) == 1 then verdict = {'retry'}; break end
    end
    if verdict then break end
  end
  if not verdict then
    local conflicts = {}
    for s = 1, count do
      local st = streams[s]
      local meta = redis.call('HMGET', meta_prefix .. st.name, 'v', 's')
      local version = tonumber(meta[1] or '0')
      local state = tonumber(meta[2] or '-1')
      if state == 2 then verdict = {'deleted', s}; break end
      local exists = state == 0
      local holds
      if st.kind == 'a' then holds = true
      elseif st.kind == 'n' then holds = not exists
      elseif st.kind == 'e' then holds = exists
      elseif st.expected == 0 then holds = not exists
      else holds = exists and version == st.expected end
      if not holds then
        conflicts[#conflicts + 1] = s
        if exists then conflicts[#conflicts + 1] = version else conflicts[#conflicts + 1] = -1 end
      end
      st.version = version
      st.state = state
    end
    if not verdict and #conflicts > 0 then verdict = {'conflict', conflicts} end
  end
  if verdict then
    replies[r] = verdict
  else
    local placed = {}
    for s = 1, count do
      local st = streams[s]
      local first_position = head + 1
      local version = st.version
      local positions = {}
      for e = 0, st.n - 1 do
        head = head + 1
        version = version + 1
        local id = ARGV[st.first + 2 * e]
        local member = id .. string.format('%020d%020d', head, version) .. stamp .. ARGV[st.first + 2 * e + 1]
        redis.call('ZADD', log_key, string.format('%d', head), member)
        redis.call('HSET', ids_key, id, string.format('%d', head))
        positions[#positions + 1] = string.format('%d', head)
        if #positions == 1000 then
          redis.call('RPUSH', positions_prefix .. st.name, unpack(positions))
          positions = {}
        end
      end
      if #positions > 0 then redis.call('RPUSH', positions_prefix .. st.name, unpack(positions)) end
      local meta_key = meta_prefix .. st.name
      if st.state == -1 then
        redis.call('HSET', meta_key, 't', st.aggregate, 'c', string.format('%d', now))
      end
      redis.call('HSET', meta_key, 'v', string.format('%d', version), 's', '0', 'u', string.format('%d', now))
      redis.call('ZADD', names_key, '0', st.name)
      placed[#placed + 1] = st.version
      placed[#placed + 1] = first_position
    end
    replies[r] = {'ok', placed}
    wrote = true
  end
end
if wrote then
  redis.call('SET', head_key, string.format('%d', head))
  redis.call('SET', clock_key, string.format('%d', now))
  redis.call('PUBLISH', channel, string.format('%d', head))
end
return {head, now, replies}
"#,
    )
});

/// Soft- or hard-deletes a stream. KEYS: log, ids, streams. ARGV: stream meta key, stream
/// positions key, stream name, mode (`soft` | `hard`). Returns 0 (done), 1 (no such
/// stream, or already soft-deleted for a soft delete) or 2 (tombstoned).
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local log_key, ids_key, names_key = KEYS[1], KEYS[2], KEYS[3]
local meta_key, positions_key, name, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = tonumber(redis.call('HGET', meta_key, 's') or '-1')
if state == -1 then return 1 end
if state == 2 then return 2 end
if state == 1 and mode == 'soft' then return 1 end
local time = redis.call('TIME')
local now = string.format('%d', tonumber(time[1]) * 1000000 + tonumber(time[2]))
redis.call('ZREM', names_key, name)
if mode == 'soft' then
  redis.call('HSET', meta_key, 's', '1', 'u', now)
  return 0
end
local positions = redis.call('LRANGE', positions_key, 0, -1)
for _, position in ipairs(positions) do
  local found = redis.call('ZRANGEBYSCORE', log_key, position, position)
  if found[1] then redis.call('HDEL', ids_key, string.sub(found[1], 1, 36)) end
  redis.call('ZREMRANGEBYSCORE', log_key, position, position)
end
redis.call('DEL', positions_key)
redis.call('HSET', meta_key, 's', '2', 'u', now)
return 0
"#,
    )
});

/// A page of the log. KEYS: head, log. ARGV: after (exclusive), bound (inclusive; 0: the
/// head), limit. Returns `{head, events}`.
pub(crate) static READ_LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local bound = tonumber(ARGV[2])
if bound == 0 or bound > head then bound = head end
local events = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], string.format('%d', bound), 'LIMIT', 0, ARGV[3])
return {head, events}
"#,
    )
});

/// Versions `from..=to` of a stream (1-based). KEYS: log. ARGV: stream meta key, stream
/// positions key, from, to. Returns `{state, events}` (state -1: no stream).
pub(crate) static READ_STREAM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local state = tonumber(redis.call('HGET', ARGV[1], 's') or '-1')
if state ~= 0 then return {state, {}} end
local positions = redis.call('LRANGE', ARGV[2], tonumber(ARGV[3]) - 1, tonumber(ARGV[4]) - 1)
local events = {}
for _, position in ipairs(positions) do
  local found = redis.call('ZRANGEBYSCORE', KEYS[1], position, position)
  if found[1] then events[#events + 1] = found[1] end
end
return {state, events}
"#,
    )
});

/// Stored events by id. KEYS: ids, log. ARGV: ids. Returns one entry per id, `false` when
/// it is not stored.
pub(crate) static EVENTS_BY_ID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i, id in ipairs(ARGV) do
  local position = redis.call('HGET', KEYS[1], id)
  out[i] = false
  if position then
    local found = redis.call('ZRANGEBYSCORE', KEYS[2], position, position)
    if found[1] then out[i] = found[1] end
  end
end
return out
"#,
    )
});

/// Live streams by name. KEYS: streams. ARGV: stream meta prefix, min, max (ZRANGEBYLEX
/// bounds), limit. Returns `{name, version, aggregate type, updated, …}`.
pub(crate) static LIST_STREAMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, ARGV[4])
local out = {}
for _, name in ipairs(names) do
  local meta = redis.call('HMGET', ARGV[1] .. name, 'v', 't', 'u')
  out[#out + 1] = name
  out[#out + 1] = meta[1] or '0'
  out[#out + 1] = meta[2] or ''
  out[#out + 1] = meta[3] or '0'
end
return out
"#,
    )
});

/// A state write. ARGV: values prefix, keys prefix, then per change: op (`p` put, `d`
/// delete, `s` delete scope, `e` expect a value, `a` expect absence), scope, key, value.
/// Every expectation is checked first; returns `{}` when the write applied, else
/// `{scope, key}` of the first expectation that failed.
pub(crate) static WRITE_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local values, keys = ARGV[1], ARGV[2]
for i = 3, #ARGV, 4 do
  local op, scope, key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'e' or op == 'a' then
    local current = redis.call('HGET', values .. scope, key)
    local holds
    if op == 'a' then holds = not current else holds = current == ARGV[i + 3] end
    if not holds then return {scope, key} end
  end
end
for i = 3, #ARGV, 4 do
  local op, scope, key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'p' then
    redis.call('HSET', values .. scope, key, ARGV[i + 3])
    redis.call('ZADD', keys .. scope, '0', key)
  elseif op == 'd' then
    redis.call('HDEL', values .. scope, key)
    redis.call('ZREM', keys .. scope, key)
  elseif op == 's' then
    redis.call('DEL', values .. scope, keys .. scope)
  end
end
return {}
"#,
    )
});

/// A page of a state scope in key order. ARGV: values key, keys key, min (ZRANGEBYLEX),
/// limit. Returns `{key, value, …}`.
pub(crate) static SCAN_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local keys = redis.call('ZRANGEBYLEX', ARGV[2], ARGV[3], '+', 'LIMIT', 0, ARGV[4])
local out = {}
for _, key in ipairs(keys) do
  local value = redis.call('HGET', ARGV[1], key)
  if value then
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
"#,
    )
});

/// Stored events by position. KEYS: log. ARGV: positions. Returns one entry per position,
/// `false` when no event is stored there (deleted).
pub(crate) static EVENTS_AT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i, position in ipairs(ARGV) do
  local found = redis.call('ZRANGEBYSCORE', KEYS[1], position, position)
  out[i] = found[1] or false
end
return out
"#,
    )
});
