//! `check_invalidations()` catches an `#[invalidates]` pattern that can match no cached key.
//!
//! This is its own test binary because the check looks at every template linked into the
//! program: the typo declared here would make the check fail for the integration tests too.
//! The binary declares one `#[cached]` template (`homepage:<section>`), one invalidation with a
//! typo (`homepgae:*`) and one correct invalidation (`homepage:*`); the check must report the
//! typo, with where it was written, and only the typo.

use cache_runtime::{cached, check_invalidations, invalidates, Cache, DeclarationKind};

#[cached(key = "homepage:<section>", ttl = "5m", cache = cache)]
async fn homepage(cache: &Cache, section: &str) -> String {
    format!("<section>{section}</section>")
}

/// The line of the typo'd attribute below, to find it in the report.
const TYPO_LINE: u32 = line!() + 2;

#[invalidates("homepgae:*", cache = cache)]
async fn publish_with_typo(cache: &Cache) -> Result<(), String> {
    let _ = cache;
    Ok(())
}

#[invalidates("homepage:*", cache = cache)]
async fn publish(cache: &Cache) -> Result<(), String> {
    let _ = cache;
    Ok(())
}

#[test]
fn the_typo_is_reported_with_its_function_file_and_line_and_the_correct_one_is_not() {
    // The functions are never called: registration happens at link time.
    let _ = (homepage, publish_with_typo, publish);

    let dead = check_invalidations().expect_err("`homepgae:*` matches no cached key");
    assert_eq!(dead.dead.len(), 1, "only the typo is dead: {dead}");
    let typo = dead.dead[0];
    assert_eq!(typo.kind, DeclarationKind::Invalidates);
    assert_eq!(typo.template, "homepgae:*");
    assert_eq!(typo.function, "publish_with_typo");
    assert!(typo.file.ends_with("dead_invalidation.rs"), "file: {:?}", typo.file);
    assert_eq!(typo.line, TYPO_LINE, "the line of the attribute");

    // What a developer reads when the check fails in their test suite.
    let report = dead.to_string();
    assert!(report.contains("homepgae:*"), "{report}");
    assert!(report.contains("publish_with_typo"), "{report}");
    assert!(report.contains("dead_invalidation.rs"), "{report}");
    assert!(report.contains(&format!("dead_invalidation.rs:{TYPO_LINE}")), "{report}");
    assert!(!report.contains("\"homepage:*\""), "{report}");
    assert!(!report.contains("`publish`"), "{report}");
}

#[test]
fn every_declaration_is_registered() {
    let mine: Vec<_> = cache_runtime::declarations()
        .filter(|d| d.file.ends_with("dead_invalidation.rs"))
        .map(|d| (d.kind, d.template, d.function))
        .collect();
    for expected in [
        (DeclarationKind::Cached, "homepage:<section>", "homepage"),
        (DeclarationKind::Invalidates, "homepgae:*", "publish_with_typo"),
        (DeclarationKind::Invalidates, "homepage:*", "publish"),
    ] {
        assert!(mine.contains(&expected), "{expected:?} not in {mine:?}");
    }
    assert_eq!(mine.len(), 3, "{mine:?}");
}
