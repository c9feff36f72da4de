//! What the cache's Redis user may run (least privilege): every command the cache sends,
//! with the feature it serves, checked on the server with `redis.acl_check_cmd` (Redis 7)
//! in one script, against the cache's own keys and channels. A restricted user cannot run
//! `ACL DRYRUN`; this needs only `EVAL`/`EVALSHA`, which the cache needs anyway.
//!
//! Checked once the server answers after build (one warning naming what is missing and what
//! it costs) and again by every [`Cache::health`](crate::Cache::health), which lists what is
//! missing, so a permission granted or revoked later shows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::Link;

/// One command the cache sends, as `redis.acl_check_cmd` takes it: the command, its
/// subcommand if any, and arguments naming the cache's keys or channels (`{p}` stands for
/// the prefix).
struct Needed {
    /// What the README's `ACL SETUSER` line grants for it.
    grant: &'static str,
    /// The call to check.
    call: &'static [&'static str],
    /// What fails without it.
    costs: &'static str,
    /// Which deployments send it.
    when: When,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    Cluster,
    Near,
}

const CORE: &str = "reads, writes, fills, invalidations, locks and rate limits fail";

/// Every command the cache sends, in the README's order.
const NEEDED: &[Needed] = &[
    Needed { grant: "+ping", call: &["ping"], costs: "the breaker's probe and health()", when: When::Always },
    Needed { grant: "+getrange", call: &["getrange", "{p}k", "0", "1"], costs: "reads", when: When::Always },
    Needed { grant: "+mget", call: &["mget", "{p}k"], costs: "batch reads (#[cached_batch], get_many)", when: When::Always },
    Needed { grant: "+pttl", call: &["pttl", "{p}k"], costs: "reads of values kept with stale or refresh", when: When::Always },
    Needed { grant: "+unlink", call: &["unlink", "{p}k"], costs: "invalidations", when: When::Always },
    Needed { grant: "+exists", call: &["exists", "{p}k"], costs: "pattern invalidations", when: When::Always },
    Needed { grant: "+zscore", call: &["zscore", "{p}k", "m"], costs: "pattern invalidations", when: When::Always },
    Needed { grant: "+zscan", call: &["zscan", "{p}k", "0"], costs: "pattern invalidations", when: When::Always },
    Needed { grant: "+scan", call: &["scan", "0"], costs: "pattern invalidations without an index level, clear(), index rebuilds", when: When::Always },
    Needed { grant: "+evalsha", call: &["evalsha", "0000000000000000000000000000000000000000", "1", "{p}k"], costs: CORE, when: When::Always },
    Needed { grant: "+eval", call: &["eval", "return 1", "1", "{p}k"], costs: CORE, when: When::Always },
    // Called by the scripts (Redis checks each call a script makes).
    Needed { grant: "+get", call: &["get", "{p}k"], costs: CORE, when: When::Always },
    Needed { grant: "+set", call: &["set", "{p}k", "v"], costs: CORE, when: When::Always },
    Needed { grant: "+del", call: &["del", "{p}k"], costs: CORE, when: When::Always },
    Needed { grant: "+incr", call: &["incr", "{p}k"], costs: "pattern invalidations", when: When::Always },
    Needed { grant: "+pexpire", call: &["pexpire", "{p}k", "1"], costs: CORE, when: When::Always },
    Needed { grant: "+strlen", call: &["strlen", "{p}k"], costs: CORE, when: When::Always },
    Needed { grant: "+time", call: &["time"], costs: CORE, when: When::Always },
    Needed { grant: "+zadd", call: &["zadd", "{p}k", "1", "m"], costs: CORE, when: When::Always },
    Needed { grant: "+zcard", call: &["zcard", "{p}k"], costs: "rate limits", when: When::Always },
    Needed { grant: "+zrange", call: &["zrange", "{p}k", "0", "1"], costs: "rate limits and pattern invalidations", when: When::Always },
    Needed { grant: "+zrem", call: &["zrem", "{p}k", "m"], costs: CORE, when: When::Always },
    Needed { grant: "+zremrangebyscore", call: &["zremrangebyscore", "{p}k", "0", "1"], costs: CORE, when: When::Always },
    Needed { grant: "+publish", call: &["publish", "{p}#released:k", "1"], costs: "lock wake-ups in other processes (they wait for the lease instead)", when: When::Always },
    Needed { grant: "+psubscribe", call: &["psubscribe", "{p}#filled:*", "{p}#released:*"], costs: "lock wake-ups (waiters wait for the lease instead)", when: When::Always },
    Needed { grant: "+config|get", call: &["config", "get", "maxmemory*"], costs: "reading the eviction policy (Redis is assumed to evict: patterns rebuild indexes with SCAN)", when: When::Always },
    Needed { grant: "+info", call: &["info", "memory"], costs: "health()'s memory and client figures", when: When::Always },
    Needed { grant: "+role", call: &["role"], costs: "following failovers behind Sentinel (the primary is confirmed with ROLE)", when: When::Always },
    Needed { grant: "+cluster|slots", call: &["cluster", "slots"], costs: "keyspace scans and the near cache on a cluster", when: When::Cluster },
    Needed { grant: "+client|tracking", call: &["client", "tracking", "on", "bcast", "prefix", "{p}"], costs: "the near cache (it never goes live)", when: When::Near },
];

/// The checking script: `ARGV[1]` is the prefix; replies the 1-based positions in
/// [`NEEDED`] (as sent) that the user may not run.
fn checker() -> Script {
    let mut calls = String::new();
    for needed in NEEDED {
        let args: Vec<String> = needed
            .call
            .iter()
            .map(|arg| match arg.split_once("{p}") {
                Some((before, after)) => format!("'{before}' .. p .. '{after}'"),
                None => format!("'{arg}'"),
            })
            .collect();
        calls.push_str(&format!("  {{{}}},\n", args.join(", ")));
    }
    Script::new(&format!(
        "local p = ARGV[1]
local calls = {{
{calls}}}
local refused = {{}}
for i, call in ipairs(calls) do
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(call))
  if ok and not allowed then table.insert(refused, i) end
end
return refused"
    ))
}

/// What the last check found; shared with the task that checks after build.
#[derive(Clone, Default)]
pub(crate) struct Access {
    /// `None` until a check got an answer.
    missing: Arc<Mutex<Option<Vec<String>>>>,
}

impl Access {
    /// The missing permissions the last check found, each as `"+grant: what fails"`
    /// (empty until a check got an answer, and when nothing is missing).
    pub(crate) fn missing(&self) -> Vec<String> {
        self.missing.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
    }

    /// Checks now (bounded by the link's command timeout), records the result, and warns
    /// once per new set of missing permissions. `Err` when the server did not answer.
    pub(crate) async fn check(
        &self,
        link: &Link,
        prefix: &str,
        near: bool,
    ) -> redis::RedisResult<Vec<String>> {
        let missing = refused(link, prefix, near).await?;
        let mut last = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&missing) && !missing.is_empty() {
            tracing::warn!(
                missing = %missing.join("; "),
                "the Redis user lacks permissions the cache needs (see the README, \"Deploying\": the ACL SETUSER line)"
            );
        }
        *last = Some(missing.clone());
        Ok(missing)
    }

    /// Checks after build, in a task (the build does not wait on it): at once, then again
    /// (1 s, doubling to 30 s) until the server answers, so the warning comes once Redis
    /// first answers.
    pub(crate) fn check_at_build(&self, link: &Link, prefix: &str, near: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (access, link, prefix) = (self.clone(), link.clone(), prefix.to_owned());
        let watched = Arc::downgrade(&self.missing);
        runtime.spawn(async move {
            let mut wait = Duration::from_secs(1);
            while access.check(&link, &prefix, near).await.is_err() {
                tokio::time::sleep(wait).await;
                // The cache was dropped (only this task holds the result now).
                if watched.strong_count() <= 1 {
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }
}

/// The permissions the user lacks, as `"+grant: what fails"`.
async fn refused(link: &Link, prefix: &str, near: bool) -> redis::RedisResult<Vec<String>> {
    let mut connection = link.clone();
    let reply: redis::RedisResult<Vec<usize>> =
        checker().arg(prefix).invoke_async(&mut connection).await;
    let positions = match reply {
        Ok(positions) => positions,
        Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            // The check itself is a script: without EVAL nothing else matters.
            return Ok(vec![format!("+eval +evalsha: {CORE}")]);
        }
        // Redis 6 (no `redis.acl_check_cmd`), or a script error: nothing known.
        Err(error) if !crate::breaker::is_connection_failure(&error) => {
            tracing::debug!(%error, "the Redis user's permissions could not be checked");
            return Ok(Vec::new());
        }
        Err(error) => return Err(error),
    };
    let cluster = link.is_cluster();
    Ok(positions
        .into_iter()
        .filter_map(|position| NEEDED.get(position.checked_sub(1)?))
        .filter(|needed| match needed.when {
            When::Always => true,
            When::Cluster => cluster,
            When::Near => near,
        })
        .map(|needed| format!("{}: {}", needed.grant, needed.costs))
        .collect())
}

#[cfg(test)]
mod tests {
    /// The README's `ACL SETUSER` line grants exactly the commands the cache sends.
    #[test]
    fn the_readme_acl_line_grants_what_the_cache_sends() {
        let readme = include_str!("../../../../README.md");
        let line = readme
            .lines()
            .find(|line| line.starts_with("ACL SETUSER cache "))
            .expect("the README's ACL line");
        let granted: Vec<&str> = line.split_whitespace().filter(|w| w.starts_with('+')).collect();
        let needed: Vec<&str> = super::NEEDED.iter().map(|needed| needed.grant).collect();
        assert_eq!(granted, needed);
    }
}
