//! Every Lua script of the Redis store, each with the one typed call that invokes it.
//!
//! A script's arguments are the named fields of its call struct; the struct's
//! [`Call::invocation`] turns them into `KEYS` and `ARGV` in the one order the script reads
//! them (and the script names them at its top), so no caller can pass them in the wrong
//! order. Each script is built once ([`redis::Script`]: its SHA1 computed once, sent with
//! `EVALSHA`, loaded on a `NOSCRIPT` reply).
//!
//! Scripts marked *standalone* also keep the written key's invalidation indexes up to date
//! in the same step (`KEYS[2..]`, see [`Target`]); on a cluster, where a script must stay in
//! one slot, their [`Target`] has no indexes and the store sends [`IndexAdd`] or [`Cover`]
//! per index level instead (`RedisStore::on_each_level`).
//!
//! The value envelope's header is read on the server by `written_ms`, generated from the
//! layout constants of `format.rs` ([`header_reader`]): the layout is defined there only.

use std::sync::LazyLock;

use redis::{Arg, Cmd, Script, ToRedisArgs};

use super::{MARKER_TAG, OVER_LIMIT_TAG};
use crate::codec::ABSENT;
use crate::format::{Field, MAGIC, SEPARATOR};

/// A script's typed call.
pub(super) trait Call {
    /// What the script replies.
    type Reply: redis::FromRedisValue;

    /// The invocation: the script with this call's `KEYS` and `ARGV`.
    fn invocation(&self) -> Invocation;
}

/// One script call, built as `EVALSHA <sha> <key count> KEYS... ARGV...` in one command.
/// It takes the place of `redis::ScriptInvocation`, which holds every key and argument in
/// a buffer of its own and copies them all into the command at each send: on a miss (two
/// script calls) that was about a third of the client's work. Keys come first: they are
/// kept until the first argument, which writes the command's head and them (the key count
/// precedes the keys).
pub(super) struct Invocation {
    script: &'static Script,
    /// The keys, until the first argument.
    keys: Cmd,
    /// The command, from the first argument on.
    command: Option<Cmd>,
}

impl Invocation {
    /// A call of `script` with no keys or arguments yet.
    pub(super) fn new(script: &'static Script) -> Invocation {
        Invocation { script, keys: Cmd::new(), command: None }
    }

    /// Adds a key (`KEYS[n]`). Every key comes before the first argument.
    pub(super) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Invocation {
        assert!(self.command.is_none(), "a script's keys come before its arguments");
        self.keys.arg(key);
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Invocation {
        self.command().arg(arg);
        self
    }

    /// The script it calls (loaded on a `NOSCRIPT` reply).
    pub(super) fn script(&self) -> &'static Script {
        self.script
    }

    /// The `EVALSHA` command.
    pub(super) fn into_command(mut self) -> Cmd {
        self.command();
        self.command.take().unwrap_or_default()
    }

    fn command(&mut self) -> &mut Cmd {
        let (script, keys) = (self.script, &self.keys);
        self.command.get_or_insert_with(|| {
            let keys: Vec<&[u8]> = keys
                .args_iter()
                .map(|key| match key {
                    Arg::Simple(bytes) => bytes,
                    // Only `SCAN`-like commands hold a cursor; keys never do.
                    _ => b"0",
                })
                .collect();
            let bytes = keys.iter().map(|key| key.len()).sum::<usize>();
            let mut command = Cmd::with_capacity(3 + keys.len() + 8, 64 + bytes + 128);
            command.arg("EVALSHA").arg(script.get_hash()).arg(keys.len()).arg(keys.as_slice());
            command
        })
    }
}

/// A written key and the invalidation indexes a standalone script updates with it (none on
/// a cluster: see the module docs).
pub(super) struct Target {
    /// The full data key (`prefix + key`).
    pub(super) data: String,
    /// The full keys of its indexes, one per level (empty on a cluster).
    pub(super) indexes: Vec<String>,
}

/// What a lease holds once its holder marked it settling ([`Settle`]): its token and this.
pub(super) const SETTLED_SUFFIX: &str = ":s";

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

/// A script body with the shared Lua functions before it:
///
/// - `now_ms()`: the server's clock.
/// - `index_add_many(index, members, ttl, now, birth)` records each of `members` with its
///   expiry (`now + ttl` ms) as score, never lowering a score (`GT`), prunes members whose
///   keys have expired, and keeps the index alive for an hour past its longest-lived member.
///   With `birth == '1'` (a server that never evicts, see `EvictionPolicy`) a newly created
///   index gets its sentinel at once: it cannot have lost members it never had. One `ZADD`
///   and one pruning for all of them (a batch's keys share their indexes).
/// - `index_add(index, member, ttl, now, birth)`: the same for one member.
/// - `written_ms(value)`: the write time in a value's `cr2` header, or `nil` (see
///   [`header_reader`]).
fn with_prelude(body: &str) -> Script {
    let source = format!(
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function index_add_many(index, members, ttl, now, birth)
  if birth == '1' and redis.call('EXISTS', index) == 0 then
    redis.call('ZADD', index, 'inf', '#')
  end
  -- One score for all, written out once (a number argument is formatted per use).
  local score = string.format('%.0f', now + ttl)
  local scored = {{}}
  for _, member in ipairs(members) do
    scored[#scored + 1] = score
    scored[#scored + 1] = member
  end
  redis.call('ZADD', index, 'GT', unpack(scored))
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now)
  local keep = ttl + 3600000
  if redis.call('PTTL', index) < keep then
    redis.call('PEXPIRE', index, keep)
  end
end
local function index_add(index, member, ttl, now, birth)
  index_add_many(index, {{member}}, ttl, now, birth)
end
{}
{body}",
        header_reader()
    );
    Script::new(&source)
}

/// The Lua function `written_ms(value)`: the write time in a `cr2` header (field
/// [`Field::Written`] after [`MAGIC`], fields ended by [`SEPARATOR`]), or `nil` for any
/// other value. Generated from `format.rs`'s constants.
pub(super) fn header_reader() -> String {
    let separator = lua_literal(&[SEPARATOR]);
    let skip = format!("[^{separator}]*{separator}").repeat(Field::Written.index());
    let pattern = format!("^{}{skip}(%d+){separator}", lua_literal(MAGIC));
    format!(
        "local function written_ms(value)\n  return tonumber(string.match(value, '{pattern}'))\nend"
    )
}

/// `bytes` as literal text inside a single-quoted Lua pattern: every byte but ASCII letters
/// and digits escaped with `%` (which Lua patterns read as that byte, in and out of sets),
/// and the string's own special characters escaped for the string literal.
fn lua_literal(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() {
            out.push(char::from(byte));
            continue;
        }
        out.push('%');
        match byte {
            b'\'' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out
}

/// Adds `member` to one index for `ttl_ms` (cluster: one call per index level).
pub(super) struct IndexAdd<'a> {
    pub(super) index: &'a str,
    pub(super) member: &'a str,
    pub(super) ttl_ms: u64,
    /// New indexes are trusted from their creation (`EvictionPolicy::Never`).
    pub(super) trusted_at_birth: bool,
}

static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local index, member, ttl, birth = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
index_add(index, member, ttl, now_ms(), birth)
return 1",
    )
});

impl Call for IndexAdd<'_> {
    type Reply = ();

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&INDEX_ADD);
        call.key(self.index).arg(self.member).arg(self.ttl_ms).arg(flag(self.trusted_at_birth));
        call
    }
}

/// Write-through: `SET` the value for `ttl_ms` (standalone: with its index entries).
pub(super) struct Write<'a> {
    pub(super) target: &'a Target,
    pub(super) value: &'a [u8],
    pub(super) ttl_ms: u64,
    /// The key without the prefix: its members in the indexes.
    pub(super) member: &'a str,
    pub(super) trusted_at_birth: bool,
}

static WRITE: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local value, ttl, member, birth = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()
for i = 2, #KEYS do index_add(KEYS[i], member, ttl, now, birth) end
redis.call('SET', KEYS[1], value, 'PX', ttl)
return 1",
    )
});

impl Call for Write<'_> {
    type Reply = ();

    fn invocation(&self) -> Invocation {
        let mut call = target_invocation(&WRITE, self.target);
        call.arg(self.value).arg(self.ttl_ms).arg(self.member).arg(flag(self.trusted_at_birth));
        call
    }
}

/// Step 1 of the fill protocol (see `store/mod.rs`). Replies `(1, value)` when a fresh
/// value is stored, `(2, marker id)` with the marker to fill. A marker is `<id>` or, when
/// it replaces an expired value kept for `stale`, `<id><expiry ms>\n<value>`, so readers
/// can still serve that value and an abandoned load can put it back.
///
/// A stored value's age is `now_ms` (the caller's clock) minus the write time in its `cr2`
/// header; a `cr1` or plain-JSON value's is `lifetime - PTTL`. A cached absent result lives
/// by its own expiry: always fresh.
pub(super) struct BeginFill<'a> {
    pub(super) target: &'a Target,
    /// The new marker (`MARKER_TAG`, a fresh id, `\n`).
    pub(super) marker: &'a [u8],
    /// How long the marker lives (the builder's `fill_window`).
    pub(super) window_ms: u64,
    pub(super) member: &'a str,
    /// How long the index entries cover the key (marker, then the value).
    pub(super) index_ttl_ms: u64,
    /// Replace whatever is stored (the caller could not decode it).
    pub(super) force: bool,
    pub(super) trusted_at_birth: bool,
    /// How long a value is fresh (`ttl`).
    pub(super) fresh_ms: u64,
    /// How long values are kept (`ttl`, or `stale` when longer).
    pub(super) lifetime_ms: u64,
    /// The caller's clock, ms since the Unix epoch.
    pub(super) now_ms: u64,
    /// The longest string returned as a value (`RedisStore::read_bound`): a longer one is
    /// replied as `OVER_LIMIT_TAG` and its length, and never kept in a marker.
    pub(super) bound: usize,
    /// The lookup itself (`read.rs`): any value that is not a marker is replied as a `GET`
    /// would (the caller classifies it); only a missing key or a marker takes a ticket.
    pub(super) lookup: bool,
}

/// Lua: step 1 of the fill protocol for one key (the body of [`BeginFill`], and of
/// [`BeginFills`] per key), so the rule is written once. `o` holds what a call's keys share
/// (`window`, `index_ttl`, `birth`, `fresh`, `lifetime`, `caller_now`, `marker_tag`,
/// `absent`, `bound`, `over_tag`, `lookup`, and `now()`: the server's clock, read once per
/// call); `index(member)` indexes the key (its levels and tag sets) once it takes a ticket.
/// Returns `{1, value}`, `{2, marker}`, or an error reply.
const BEGIN_ONE: &str = r"
local function begin_one(key, marker, member, force, o, index)
  -- One command on a miss (Redis 7+: `SET NX GET` places the marker where nothing is and
  -- answers what is there); `GET` first where the value may be replaced (`force`).
  local placed = false
  local current
  if o.nx_get and not force then
    current = redis.pcall('SET', key, marker, 'NX', 'PX', o.window_arg, 'GET')
    placed = not current
  else
    current = redis.pcall('GET', key)
  end
  if o.lookup and type(current) == 'table' and current.err then
    return redis.error_reply(current.err)
  end
  if type(current) == 'table' and current.err then
    -- Not a string (another application's data): replaced only when forced.
    if not force then return redis.error_reply(current.err) end
    redis.call('DEL', key)
    current = false
  end
  if placed then
    index(member)
    return {2, marker}
  end
  local pending = current and string.sub(current, 1, #o.marker_tag) == o.marker_tag
  local kept = false
  local left = 0
  if current and not pending and o.lookup then
    if #current > o.bound then return {1, o.over_tag .. #current} end
    return {1, current}
  end
  if current and not pending and not force then
    if current == o.absent then
      return {1, current}
    end
    left = redis.call('PTTL', key)
    -- Age: by the write time of a cr2 header (the caller's clock), else by expiry.
    local written = written_ms(current)
    local age = o.lifetime - left
    if written then age = math.max(0, o.caller_now - written) end
    if #current > o.bound then
      -- Longer than any value of the cache: reported by its length, never sent or kept.
      return {1, o.over_tag .. #current}
    end
    if age < o.fresh then
      return {1, current}
    end
    kept = current
  end
  index(member)
  if pending then
    local stop = string.find(current, '\n', #o.marker_tag + 1, true)
    return {2, string.sub(current, 1, stop)}
  end
  if kept and left > 0 then
    redis.call('SET', key, marker .. (o.now() + left) .. '\n' .. kept, 'PX', math.max(o.window, left))
  else
    redis.call('SET', key, marker, 'PX', o.window_arg)
  end
  return {2, marker}
end
local function nx_get()
  -- `SET ... NX GET` is Redis 7's (`REDIS_VERSION_NUM` too).
  return redis.REDIS_VERSION_NUM ~= nil and redis.REDIS_VERSION_NUM >= 0x070000
end
local function clock()
  local now = nil
  return function()
    if not now then now = now_ms() end
    return now
  end
end";

static BEGIN_FILL: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r"{BEGIN_ONE}
local o = {{
  window = tonumber(ARGV[2]), window_arg = ARGV[2], nx_get = nx_get(),
  index_ttl = tonumber(ARGV[4]), force = ARGV[5] == '1',
  birth = ARGV[6], fresh = tonumber(ARGV[7]), lifetime = tonumber(ARGV[8]),
  caller_now = tonumber(ARGV[9]), marker_tag = ARGV[10], absent = ARGV[11],
  bound = tonumber(ARGV[12]), over_tag = ARGV[13], lookup = ARGV[14] == '1', now = clock(),
}}
local function index(member)
  for i = 2, #KEYS do index_add(KEYS[i], member, o.index_ttl, o.now(), o.birth) end
end
return begin_one(KEYS[1], ARGV[1], ARGV[3], o.force, o, index)"
    ))
});

impl Call for BeginFill<'_> {
    type Reply = (i64, Vec<u8>);

    fn invocation(&self) -> Invocation {
        let mut call = target_invocation(&BEGIN_FILL, self.target);
        call.arg(self.marker)
            .arg(self.window_ms)
            .arg(self.member)
            .arg(self.index_ttl_ms)
            .arg(flag(self.force))
            .arg(flag(self.trusted_at_birth))
            .arg(self.fresh_ms)
            .arg(self.lifetime_ms)
            .arg(self.now_ms)
            .arg(MARKER_TAG)
            .arg(ABSENT)
            .arg(self.bound)
            .arg(OVER_LIMIT_TAG)
            .arg(flag(self.lookup));
        call
    }
}

/// One key of a [`BeginFills`].
pub(super) struct BeginKey<'a> {
    /// The full data key.
    pub(super) data: &'a str,
    /// Its new marker (as [`BeginFill::marker`]).
    pub(super) marker: &'a [u8],
    /// The key without the prefix: its member in the indexes.
    pub(super) member: &'a str,
    /// Replace whatever is stored (the caller could not decode it).
    pub(super) force: bool,
    /// Its indexes (levels, tag sets), as places in [`BeginFills::indexes`] (none on a
    /// cluster).
    pub(super) indexes: Vec<usize>,
}

/// Step 1 of the fill protocol for many keys in one call (a batch; on a cluster, the keys
/// of one slot): each key as [`BeginFill`] decides for one (the same Lua function), with
/// the call's shared settings; the index entries of the keys that take a ticket are added
/// at the end, one `ZADD` per index. With `lookup`, the batch's lookup itself (see
/// `read_many.rs`). Replies per key, in order, a [`BeginReply`] ([`BeginFills::answers`]
/// reads them).
pub(super) struct BeginFills<'a> {
    pub(super) keys: &'a [BeginKey<'a>],
    /// The full keys of the indexes the keys name (standalone; empty on a cluster).
    pub(super) indexes: &'a [String],
    pub(super) window_ms: u64,
    pub(super) index_ttl_ms: u64,
    pub(super) trusted_at_birth: bool,
    pub(super) fresh_ms: u64,
    pub(super) lifetime_ms: u64,
    pub(super) now_ms: u64,
    pub(super) bound: usize,
    /// The lookup itself (as [`BeginFill::lookup`]): a batch's lookup and step 1 in one
    /// round trip.
    pub(super) lookup: bool,
    /// What every key's marker starts with: key `i` (from 0) of the call has the marker
    /// `marker_prefix`, `i` in hex, `\n` (see [`BeginFills::marker`]).
    pub(super) marker_prefix: &'a [u8],
    /// The length of the store's prefix: each key's member is its data key past it.
    pub(super) prefix_len: usize,
}

impl BeginFills<'_> {
    /// The marker of key `at` (from 0) of a call whose markers start with `prefix`.
    pub(super) fn marker(prefix: &[u8], at: usize) -> Vec<u8> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut marker = Vec::with_capacity(prefix.len() + 17);
        marker.extend_from_slice(prefix);
        // `{at:x}`, without the formatter (it runs once per key of a batch).
        let digits = (usize::BITS - at.leading_zeros()).div_ceil(4).max(1);
        marker.extend((0..digits).rev().map(|place| DIGITS[(at >> (4 * place)) & 0xf]));
        marker.push(b'\n');
        marker
    }
}

static BEGIN_FILLS: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r"{BEGIN_ONE}
local o = {{
  window = tonumber(ARGV[1]), window_arg = ARGV[1], nx_get = nx_get(),
  index_ttl = tonumber(ARGV[2]), birth = ARGV[3],
  fresh = tonumber(ARGV[4]), lifetime = tonumber(ARGV[5]), caller_now = tonumber(ARGV[6]),
  marker_tag = ARGV[7], absent = ARGV[8], bound = tonumber(ARGV[9]), over_tag = ARGV[10],
  lookup = ARGV[12] == '1', now = clock(),
}}
local n = tonumber(ARGV[11])
-- Per key, nothing in ARGV (the usual batch): its marker is the call's prefix and its
-- place, its member its key past the data prefix, its force flag a letter, its index list
-- one of the call's distinct lists.
local marker_prefix, prefix_len, forced = ARGV[13], tonumber(ARGV[14]), ARGV[15]
local lists = {{}}
local distinct = tonumber(ARGV[16])
for k = 1, distinct do
  local list = {{}}
  for place in string.gmatch(ARGV[16 + k], '%d+') do list[#list + 1] = tonumber(place) end
  lists[k] = list
end
local members = {{}}
-- The reply: a status letter per key (`p`: this call's marker placed; `v`: a value, `m`:
-- another load's marker, `e`: an error, each with its bytes after the letters, in order),
-- so the usual cold key costs one byte of the reply, not an array.
local status = {{}}
local out = {{''}}
-- The key being begun and its index list (read by `index`, one function for all keys
-- rather than a closure per key).
local key_at, places = 0, {{}}
local function index(_)
  local member = string.sub(KEYS[key_at], prefix_len + 1)
  for _, k in ipairs(places) do
    local list = members[k]
    if not list then list = {{}}; members[k] = list end
    list[#list + 1] = member
  end
end
for i = 1, n do
  key_at = i
  if distinct == 1 then places = lists[1]
  elseif distinct > 1 then places = lists[tonumber(ARGV[16 + distinct + i])] end
  local marker = marker_prefix .. string.format('%x', i - 1) .. '\n'
  local force = string.byte(forced, i) == 49
  local reply = begin_one(KEYS[i], marker, nil, force, o, index)
  if reply.err then
    status[i] = 'e'
    out[#out + 1] = reply.err
  elseif reply[1] == 1 then
    status[i] = 'v'
    out[#out + 1] = reply[2]
  elseif reply[2] == marker then
    status[i] = 'p'
  else
    status[i] = 'm'
    out[#out + 1] = reply[2]
  end
end
for k, list in pairs(members) do
  index_add_many(KEYS[n + k], list, o.index_ttl, o.now(), o.birth)
end
out[1] = table.concat(status)
return out"
    ))
});

/// One key's answer in a [`BeginFills`] reply.
pub(super) enum BeginReply {
    /// This call's marker is placed (the usual cold key).
    Placed,
    /// A value is stored (as [`BeginFill`] replies `(1, value)`).
    Value(Vec<u8>),
    /// Another load's marker is there, adopted (as `(2, marker)`).
    Pending(Vec<u8>),
    /// The key holds another type and is not forced: the error [`BeginFill`] would reply.
    Refused(Vec<u8>),
}

impl BeginFills<'_> {
    /// The answers in a reply, one per key (`keys` of them); `None` when the reply does
    /// not hold one per key.
    pub(super) fn answers(reply: Vec<Vec<u8>>, keys: usize) -> Option<Vec<BeginReply>> {
        let mut parts = reply.into_iter();
        let status = parts.next()?;
        if status.len() != keys {
            return None;
        }
        let answers: Option<Vec<BeginReply>> = status
            .iter()
            .map(|letter| match letter {
                b'p' => Some(BeginReply::Placed),
                b'v' => parts.next().map(BeginReply::Value),
                b'm' => parts.next().map(BeginReply::Pending),
                b'e' => parts.next().map(BeginReply::Refused),
                _ => None,
            })
            .collect();
        answers.filter(|_| parts.next().is_none())
    }
}

impl Call for BeginFills<'_> {
    type Reply = Vec<Vec<u8>>;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&BEGIN_FILLS);
        for key in self.keys {
            call.key(key.data);
        }
        for index in self.indexes {
            call.key(index.as_str());
        }
        call.arg(self.window_ms)
            .arg(self.index_ttl_ms)
            .arg(flag(self.trusted_at_birth))
            .arg(self.fresh_ms)
            .arg(self.lifetime_ms)
            .arg(self.now_ms)
            .arg(MARKER_TAG)
            .arg(ABSENT)
            .arg(self.bound)
            .arg(OVER_LIMIT_TAG)
            .arg(self.keys.len())
            .arg(flag(self.lookup))
            .arg(self.marker_prefix)
            .arg(self.prefix_len);
        let forced: String = self.keys.iter().map(|key| flag(key.force)).collect();
        call.arg(forced);
        // The distinct index lists (as 1-based places, Lua counts from 1), each key's by
        // number when there are several.
        let mut lists: Vec<&[usize]> = Vec::new();
        let mut chosen = Vec::with_capacity(self.keys.len());
        for key in self.keys {
            debug_assert_eq!(key.data.len(), self.prefix_len + key.member.len());
            debug_assert!(key.data.ends_with(key.member));
            debug_assert!(key.marker.starts_with(self.marker_prefix));
            let list = match lists.iter().position(|list| *list == key.indexes.as_slice()) {
                Some(at) => at,
                None => {
                    lists.push(&key.indexes);
                    lists.len() - 1
                }
            };
            chosen.push(list + 1);
        }
        if lists.iter().all(|list| list.is_empty()) {
            lists.clear();
        }
        call.arg(lists.len());
        for list in &lists {
            let places: Vec<String> = list.iter().map(|place| (place + 1).to_string()).collect();
            call.arg(places.join(" "));
        }
        if lists.len() > 1 {
            for list in chosen {
                call.arg(list);
            }
        }
        call
    }
}

/// Lua: step 3 of the fill protocol for one key, and the abandon of a load that stores
/// nothing (the bodies of [`Fill`] and [`Abandon`], and of [`Settles`] per key).
///
/// - `fill_one(key, marker, value, ttl)`: `SET key value PX ttl` if the key still holds
///   `marker`; 1 when stored.
/// - `abandon_one(key, marker, placed_here)`: whether the key still holds `marker` (1 or
///   0); when this load placed it, it is removed, putting back the expired value it kept
///   for stale fallback (until that value's own expiry).
const SETTLE_ONE: &str = r"
local function fill_one(key, marker, value, ttl)
  local current = redis.call('GET', key)
  -- The marker alone (the usual case), or the marker keeping an expired value.
  if current == marker or (current and string.sub(current, 1, #marker) == marker) then
    redis.call('SET', key, value, 'PX', ttl)
    return 1
  end
  return 0
end
local function abandon_one(key, marker, placed_here)
  local current = redis.call('GET', key)
  if not current or string.sub(current, 1, #marker) ~= marker then return 0 end
  if not placed_here then return 1 end
  local rest = string.sub(current, #marker + 1)
  if #rest > 0 then
    local stop = string.find(rest, '\n', 1, true)
    local left = tonumber(string.sub(rest, 1, stop - 1)) - now_ms()
    if left > 0 then
      redis.call('SET', key, string.sub(rest, stop + 1), 'PX', left)
      return 1
    end
  end
  redis.call('DEL', key)
  return 1
end";

/// What [`Settles`] does with one key.
pub(super) enum SettleOp<'a> {
    /// [`Fill`]: store `value` for `ttl_ms` if the key still holds the marker.
    Fill { value: &'a [u8], ttl_ms: u64 },
    /// [`Abandon`]: whether the key still holds the marker; removed if `placed_here`.
    Abandon { placed_here: bool },
}

/// One key of a [`Settles`].
pub(super) struct SettleKey<'a> {
    /// The full data key.
    pub(super) data: String,
    pub(super) marker: &'a [u8],
    pub(super) op: SettleOp<'a>,
}

/// Step 3 of the fill protocol for many keys in one call (a batch's fills and abandons;
/// on a cluster, the keys of one slot): per key, what [`Fill`] or [`Abandon`] does (the
/// same Lua functions). Replies per key, in order, the digit `1` or `0` as they would
/// reply 1 or 0, in one string.
pub(super) struct Settles<'a> {
    pub(super) keys: &'a [SettleKey<'a>],
}

static SETTLES: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r"{SETTLE_ONE}
-- One digit per key (1: stored or held, 0: not): one string, not an array.
local replies = {{}}
for i = 1, #KEYS do
  local op, marker, value, ttl = ARGV[4 * i - 3], ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i]
  if op == 'f' then
    replies[i] = fill_one(KEYS[i], marker, value, ttl)
  else
    replies[i] = abandon_one(KEYS[i], marker, op == 'a')
  end
end
return table.concat(replies)"
    ))
});

impl Call for Settles<'_> {
    /// One digit per key: `1` stored (or held), `0` not.
    type Reply = Vec<u8>;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&SETTLES);
        for key in self.keys {
            call.key(key.data.as_str());
        }
        for key in self.keys {
            match key.op {
                SettleOp::Fill { value, ttl_ms } => {
                    call.arg("f").arg(key.marker).arg(value).arg(ttl_ms);
                }
                SettleOp::Abandon { placed_here } => {
                    call.arg(if placed_here { "a" } else { "k" }).arg(key.marker).arg("").arg(0);
                }
            }
        }
        call
    }
}

/// Cluster side of [`BeginFills`]' index entries: adds `members` to one index for
/// `ttl_ms`, in one call (one `ZADD`).
pub(super) struct IndexAddMany<'a> {
    pub(super) index: &'a str,
    pub(super) members: &'a [&'a str],
    pub(super) ttl_ms: u64,
    pub(super) trusted_at_birth: bool,
}

static INDEX_ADD_MANY: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local ttl, birth = tonumber(ARGV[1]), ARGV[2]
local members = {}
for i = 3, #ARGV do members[#members + 1] = ARGV[i] end
index_add_many(KEYS[1], members, ttl, now_ms(), birth)
return 1",
    )
});

impl Call for IndexAddMany<'_> {
    type Reply = ();

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&INDEX_ADD_MANY);
        call.key(self.index).arg(self.ttl_ms).arg(flag(self.trusted_at_birth));
        for member in self.members {
            call.arg(*member);
        }
        call
    }
}

/// Step 3 of the fill protocol: `SET data value PX ttl_ms` if the key still holds the
/// marker `marker`. Replies 1 when stored.
pub(super) struct Fill<'a> {
    pub(super) data: &'a str,
    pub(super) marker: &'a [u8],
    pub(super) value: &'a [u8],
    pub(super) ttl_ms: u64,
}

static FILL: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r"{SETTLE_ONE}
return fill_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"
    ))
});

impl Call for Fill<'_> {
    type Reply = i64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&FILL);
        call.key(self.data).arg(self.marker).arg(self.value).arg(self.ttl_ms);
        call
    }
}

/// A refresh: replaces the value only if the key still holds the bytes `old` with a
/// remaining time to live of at most `old_pttl_ms` (a later write of the same bytes lives
/// longer). Replies 1 when replaced.
pub(super) struct Replace<'a> {
    pub(super) target: &'a Target,
    pub(super) old: &'a [u8],
    pub(super) old_pttl_ms: i64,
    pub(super) value: &'a [u8],
    pub(super) ttl_ms: u64,
    pub(super) member: &'a str,
    pub(super) trusted_at_birth: bool,
}

static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local old, old_pttl, value, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local member, birth = ARGV[5], ARGV[6]
if redis.call('GET', KEYS[1]) ~= old then return 0 end
if redis.call('PTTL', KEYS[1]) > old_pttl then return 0 end
local now = now_ms()
for i = 2, #KEYS do index_add(KEYS[i], member, ttl, now, birth) end
redis.call('SET', KEYS[1], value, 'PX', ttl)
return 1",
    )
});

impl Call for Replace<'_> {
    type Reply = i64;

    fn invocation(&self) -> Invocation {
        let mut call = target_invocation(&REPLACE, self.target);
        call.arg(self.old)
            .arg(self.old_pttl_ms)
            .arg(self.value)
            .arg(self.ttl_ms)
            .arg(self.member)
            .arg(flag(self.trusted_at_birth));
        call
    }
}

/// A hit for `idle` (sliding expiration), in one round trip: `GET` and, for a value with a
/// write time (a `cr2` header), `PEXPIRE` to `min(idle, cap - age)`, age being `now_ms` (the
/// caller's clock) minus the write time. A value at least `cap` old, a pending marker and a
/// value without a write time are returned untouched (the caller reads the first two as a
/// miss). Standalone: the key's indexes are made to cover the extended life (a member whose
/// score lies before the new expiry is re-added until the cap). Replies the stored bytes.
pub(super) struct Touch<'a> {
    pub(super) target: &'a Target,
    pub(super) idle_ms: u64,
    pub(super) cap_ms: u64,
    pub(super) now_ms: u64,
    pub(super) member: &'a str,
    pub(super) trusted_at_birth: bool,
    /// The longest string returned as a value (`RedisStore::read_bound`): a longer one is
    /// neither read nor extended, and replied as `OVER_LIMIT_TAG` and its length (a marker
    /// as its tag).
    pub(super) bound: usize,
}

static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local idle, cap, caller_now, marker_tag = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local member, birth, bound, over_tag = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local size = redis.call('STRLEN', KEYS[1])
if size > bound then
  local head = redis.call('GETRANGE', KEYS[1], 0, #marker_tag - 1)
  if head == marker_tag then return head end
  return over_tag .. size
end
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #marker_tag) == marker_tag then return current end
local written = written_ms(current)
if not written then return current end
local until_cap = cap - math.max(0, caller_now - written)
if until_cap <= 0 then return current end
local left = math.min(idle, until_cap)
redis.call('PEXPIRE', KEYS[1], left)
if #KEYS > 1 then
  local now = now_ms()
  for i = 2, #KEYS do
    local score = redis.call('ZSCORE', KEYS[i], member)
    if not score or tonumber(score) < now + left then
      index_add(KEYS[i], member, until_cap, now, birth)
    end
  end
end
return current",
    )
});

impl Call for Touch<'_> {
    type Reply = Option<Vec<u8>>;

    fn invocation(&self) -> Invocation {
        let mut call = target_invocation(&TOUCH, self.target);
        call.arg(self.idle_ms)
            .arg(self.cap_ms)
            .arg(self.now_ms)
            .arg(MARKER_TAG)
            .arg(self.member)
            .arg(flag(self.trusted_at_birth))
            .arg(self.bound)
            .arg(OVER_LIMIT_TAG);
        call
    }
}

/// Cluster side of [`Touch`]'s index cover, per index: `member` is re-added for `cap_ms`
/// if its score lies before `now + idle_ms` (the furthest a hit moves the expiry).
pub(super) struct Cover<'a> {
    pub(super) index: &'a str,
    pub(super) member: &'a str,
    pub(super) idle_ms: u64,
    pub(super) cap_ms: u64,
    pub(super) trusted_at_birth: bool,
}

static COVER: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local member, idle, cap, birth = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], member)
if not score or tonumber(score) < now + idle then
  index_add(KEYS[1], member, cap, now, birth)
end
return 1",
    )
});

impl Call for Cover<'_> {
    type Reply = ();

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&COVER);
        call.key(self.index)
            .arg(self.member)
            .arg(self.idle_ms)
            .arg(self.cap_ms)
            .arg(flag(self.trusted_at_birth));
        call
    }
}

/// Re-indexes `full_keys` in `index`, each with its remaining time to live (standalone:
/// the keys share the script's node). Members are the keys without the prefix
/// (`prefix_len` bytes).
pub(super) struct Reindex<'a> {
    pub(super) index: &'a str,
    pub(super) full_keys: &'a [String],
    pub(super) prefix_len: usize,
    pub(super) trusted_at_birth: bool,
}

static REINDEX: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(
        r"
local prefix_len, birth = tonumber(ARGV[1]), ARGV[2]
local now = now_ms()
for i = 2, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left > 0 then
    index_add(KEYS[1], string.sub(KEYS[i], prefix_len + 1), left, now, birth)
  end
end
return 1",
    )
});

impl Call for Reindex<'_> {
    type Reply = ();

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&REINDEX);
        call.key(self.index);
        for full in self.full_keys {
            call.key(full.as_str());
        }
        call.arg(self.prefix_len).arg(flag(self.trusted_at_birth));
        call
    }
}

/// Starts an index rebuild: a member of its own (`own`), so the end ([`Trust`]) can tell
/// whether the index survived the scan.
pub(super) struct StartRebuild<'a> {
    pub(super) index: &'a str,
    pub(super) own: &'a str,
}

static START_REBUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local own = ARGV[1]
redis.call('ZADD', KEYS[1], 'inf', own)
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
return 1",
    )
});

impl Call for StartRebuild<'_> {
    type Reply = ();

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&START_REBUILD);
        call.key(self.index).arg(self.own);
        call
    }
}

/// Ends an index rebuild: the index is trusted again (its sentinel set) only if it was not
/// lost while the keyspace was scanned (the rebuild's own member is still there). Replies 1
/// when trusted.
pub(super) struct Trust<'a> {
    pub(super) index: &'a str,
    pub(super) own: &'a str,
}

static TRUST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local own = ARGV[1]
if redis.call('ZSCORE', KEYS[1], own) then
  redis.call('ZREM', KEYS[1], own)
  redis.call('ZADD', KEYS[1], 'inf', '#')
  return 1
end
return 0",
    )
});

impl Call for Trust<'_> {
    type Reply = i64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&TRUST);
        call.key(self.index).arg(self.own);
        call
    }
}

/// A load stores nothing: whether the key still holds `marker` (1) or not (0). When this
/// load placed it (`placed_here`) it is removed, putting back the expired value it kept for
/// stale fallback (until that value's own expiry).
pub(super) struct Abandon<'a> {
    pub(super) data: &'a str,
    pub(super) marker: &'a [u8],
    pub(super) placed_here: bool,
}

static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r"{SETTLE_ONE}
return abandon_one(KEYS[1], ARGV[1], ARGV[2] == '1')"
    ))
});

impl Call for Abandon<'_> {
    type Reply = i64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&ABANDON);
        call.key(self.data).arg(self.marker).arg(flag(self.placed_here));
        call
    }
}

/// Sets the lock `lock` to `token` if free and replies the next fencing token (from
/// `fence`, which shares the lock's slot), else 0.
pub(super) struct Acquire<'a> {
    pub(super) lock: &'a str,
    pub(super) fence: &'a str,
    pub(super) token: &'a str,
    pub(super) lease_ms: u64,
}

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local token, lease = ARGV[1], ARGV[2]
if redis.call('SET', KEYS[1], token, 'NX', 'PX', lease) then
  return redis.call('INCR', KEYS[2])
end
return 0",
    )
});

impl Call for Acquire<'_> {
    type Reply = u64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&ACQUIRE);
        call.key(self.lock).key(self.fence).arg(self.token).arg(self.lease_ms);
        call
    }
}

/// Lua: whether `held` (a lease's value) is `token`'s, settling or not.
const HELD_BY: &str = r"
local function held_by(held, token, settled)
  return held == token or held == token .. settled
end";

/// Extends the lease to `lease_ms` if `token` still holds it (settling or not). Replies 1
/// when extended.
pub(super) struct Extend<'a> {
    pub(super) lease: &'a str,
    pub(super) token: &'a str,
    pub(super) lease_ms: u64,
}

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HELD_BY}
local token, lease, settled = ARGV[1], ARGV[2], ARGV[3]
if held_by(redis.call('GET', KEYS[1]), token, settled) then
  return redis.call('PEXPIRE', KEYS[1], lease)
end
return 0"
    ))
});

impl Call for Extend<'_> {
    type Reply = u64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&EXTEND);
        call.key(self.lease).arg(self.token).arg(self.lease_ms).arg(SETTLED_SUFFIX);
        call
    }
}

/// Deletes the lease if `token` still holds it (settling or not), and publishes `payload`
/// on `channel` to wake waiters. Replies 1 when released.
pub(super) struct Release<'a> {
    pub(super) lease: &'a str,
    pub(super) token: &'a str,
    pub(super) channel: &'a str,
    /// `1`: look again, `0`: the holder failed, `2:<token>`: the value is absent, by the
    /// holder `<token>`.
    pub(super) payload: &'a str,
}

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HELD_BY}
local token, channel, payload, settled = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if held_by(redis.call('GET', KEYS[1]), token, settled) then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', channel, payload)
  return 1
end
return 0"
    ))
});

impl Call for Release<'_> {
    type Reply = u64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&RELEASE);
        call.key(self.lease)
            .arg(self.token)
            .arg(self.channel)
            .arg(self.payload)
            .arg(SETTLED_SUFFIX);
        call
    }
}

/// Marks the lease settling (its holder is about to confirm its outcome with the store):
/// if `token` holds it, its value becomes `token` + [`SETTLED_SUFFIX`], its time to live
/// unchanged. Replies 1 when `token` held it (settling already or not).
pub(super) struct Settle<'a> {
    pub(super) lease: &'a str,
    pub(super) token: &'a str,
}

static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{HELD_BY}
local token, settled = ARGV[1], ARGV[2]
if not held_by(redis.call('GET', KEYS[1]), token, settled) then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  redis.call('SET', KEYS[1], token .. settled, 'PX', left)
else
  redis.call('SET', KEYS[1], token .. settled, 'KEEPTTL')
end
return 1"
    ))
});

impl Call for Settle<'_> {
    type Reply = u64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&SETTLE);
        call.key(self.lease).arg(self.token).arg(SETTLED_SUFFIX);
        call
    }
}

/// A standalone script's invocation on `target`: its data key, then its indexes.
fn target_invocation(script: &'static Script, target: &Target) -> Invocation {
    let mut call = Invocation::new(script);
    call.key(target.data.as_str());
    for index in &target.indexes {
        call.key(index.as_str());
    }
    call
}

/// A rate-limit decision, an exact sliding window (see `Cache::rate_limit`): one sorted set
/// per limiter, `key`, whose members are the admission times (`TIME` as microseconds, digits
/// only), made unique with a suffix when two calls share a microsecond. A refused call's slot
/// frees when the entry at `count - limit` (the oldest, unless the limit was lowered) leaves
/// the window; the limiter is full again when the newest has. Replies
/// `{allowed (1/0), remaining, retry_after µs, reset_after µs}`.
pub(super) struct RateDecide<'a> {
    /// The limiter's full key (`<prefix>#rate:{<key>}`).
    pub(super) key: &'a str,
    pub(super) limit: u64,
    pub(super) window_micros: u128,
    /// The key's expiry: the window, in milliseconds (at least 1).
    pub(super) expire_ms: u64,
}

static RATE_DECIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local limit, window, expire_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local stamp = t[1] .. string.format('%06d', tonumber(t[2]))
local now = tonumber(stamp)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  local member, n = stamp, 0
  while redis.call('ZADD', KEYS[1], 'NX', stamp, member) == 0 do
    n = n + 1
    member = stamp .. '.' .. n
  end
  redis.call('PEXPIRE', KEYS[1], expire_ms)
  return {1, limit - count - 1, 0, window}
end
local freeing = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
return {0, 0, tonumber(freeing[2]) + window - now, tonumber(newest[2]) + window - now}",
    )
});

impl Call for RateDecide<'_> {
    type Reply = (i64, i64, i64, i64);

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&RATE_DECIDE);
        call.key(self.key).arg(self.limit).arg(self.window_micros.to_string()).arg(self.expire_ms);
        call
    }
}

/// Removes keys stored with a tag and their members of the tag's set, in one step
/// (standalone, where the set and the keys share the server): a key written again later
/// joins the set again, so the set never misses a live key. `KEYS[1]` is the tag's set,
/// `KEYS[2..]` the full keys, `ARGV` their members in the same order. Replies the number of
/// keys removed.
pub(super) struct TagUnlink<'a> {
    pub(super) set: &'a str,
    pub(super) full_keys: &'a [String],
    pub(super) members: &'a [&'a str],
}

static TAG_UNLINK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('UNLINK', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i - 1])
end
return removed",
    )
});

impl Call for TagUnlink<'_> {
    type Reply = u64;

    fn invocation(&self) -> Invocation {
        let mut call = Invocation::new(&TAG_UNLINK);
        call.key(self.set);
        for full in self.full_keys {
            call.key(full.as_str());
        }
        for member in self.members {
            call.arg(*member);
        }
        call
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reader_follows_the_envelope_layout() {
        // cr2:<codec>:<compression>:<fingerprint>:<written>:...
        assert!(header_reader().contains("'^cr2%:[^%:]*%:[^%:]*%:[^%:]*%:(%d+)%:'"));
    }

    #[test]
    fn a_batch_marker_is_the_prefix_then_the_place_in_hex_as_the_script_builds_it() {
        // Lua: marker_prefix .. string.format('%x', i - 1) .. '\n'
        for at in [0, 1, 9, 10, 15, 16, 255, 499, usize::MAX] {
            let expected = [&b"p."[..], format!("{at:x}\n").as_bytes()].concat();
            assert_eq!(BeginFills::marker(b"p.", at), expected);
        }
    }

    #[test]
    fn lua_literals_escape_pattern_and_string_specials() {
        assert_eq!(lua_literal(b"cr2:"), "cr2%:");
        assert_eq!(lua_literal(b"a.b'c\\"), "a%.b%\\'c%\\\\");
        assert_eq!(lua_literal(b"\0"), "%\\000");
    }
}
