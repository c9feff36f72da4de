//! Runs every recipe binary, with the memory store and against a private Redis: each
//! asserts what it shows and must exit 0.

use std::process::Command;

use cache_tests::RedisServer;

const RECIPES: [(&str, &str); 10] = [
    ("cache_aside", env!("CARGO_BIN_EXE_cache_aside")),
    ("write_through", env!("CARGO_BIN_EXE_write_through")),
    ("invalidate_pattern", env!("CARGO_BIN_EXE_invalidate_pattern")),
    ("stampede_lock", env!("CARGO_BIN_EXE_stampede_lock")),
    ("lease_lock_fencing", env!("CARGO_BIN_EXE_lease_lock_fencing")),
    ("rate_limit", env!("CARGO_BIN_EXE_rate_limit")),
    ("custom_keypart", env!("CARGO_BIN_EXE_custom_keypart")),
    ("store_from_config", env!("CARGO_BIN_EXE_store_from_config")),
    ("quickstart", env!("CARGO_BIN_EXE_quickstart")),
    ("sessions", env!("CARGO_BIN_EXE_sessions")),
];

fn run_all(redis_url: Option<&str>) {
    for (name, path) in RECIPES {
        let mut command = Command::new(path);
        command.env_remove("REDIS_URL");
        if let Some(url) = redis_url {
            command.env("REDIS_URL", url);
        }
        let output = command.output().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            output.status.success(),
            "{name} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn recipes_run_with_the_memory_store() {
    run_all(None);
}

#[test]
fn recipes_run_against_redis() {
    let redis = RedisServer::start();
    run_all(Some(&redis.url()));
}

/// The `sessions` recipe against Redis alone: login, touches past `idle`, the `ttl` cap,
/// expiry after `idle` without reads, and logout (the recipe asserts each step).
#[test]
fn sessions_recipe_against_redis() {
    let redis = RedisServer::start();
    let output = Command::new(env!("CARGO_BIN_EXE_sessions"))
        .env("REDIS_URL", redis.url())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for step in ["lived until its 3 s cap", "idle for 1.3 s expired", "logout removed"] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
}
