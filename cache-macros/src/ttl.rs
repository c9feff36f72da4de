//! Time-to-live literals: `"500ms"`, `"15m"`, `"1h30m"`, `"2d"`, parsed at compile time.

/// Units from largest to smallest. `ms` comes before `m` so that `5ms` is not read as `5m`+`s`.
const UNITS: [(&str, u64); 5] =
    [("d", 86_400_000), ("h", 3_600_000), ("ms", 1), ("m", 60_000), ("s", 1_000)];

/// Rank of each unit, for the "largest first, each once" rule.
fn rank(unit: &str) -> u8 {
    match unit {
        "d" => 0,
        "h" => 1,
        "m" => 2,
        "s" => 3,
        _ => 4, // ms
    }
}

/// Parses a duration literal into milliseconds.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, String> {
    const HELP: &str = "write one or more `<integer><unit>` with units ms, s, m, h, d, largest first, e.g. \"500ms\", \"15m\", \"1h30m\"";
    if text.is_empty() {
        return Err(format!("empty duration; {HELP}"));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut last_rank: Option<u8> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?}; {HELP}"
            ));
        }
        let (number, after) = rest.split_at(digits);
        let Some((unit, millis)) = UNITS.iter().find(|(unit, _)| after.starts_with(unit)) else {
            let found: String = after.chars().take_while(|c| !c.is_ascii_digit()).collect();
            return Err(if found.is_empty() {
                format!("invalid duration {text:?}: `{number}` has no unit; {HELP}")
            } else {
                format!("invalid duration {text:?}: unknown unit `{found}`; {HELP}")
            });
        };
        if last_rank.is_some_and(|last| rank(unit) <= last) {
            return Err(format!(
                "invalid duration {text:?}: unit `{unit}` is repeated or out of order; {HELP}"
            ));
        }
        last_rank = Some(rank(unit));
        let value: u64 = number.parse().map_err(|_| format!("duration {text:?} is too large"))?;
        total = value
            .checked_mul(*millis)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        rest = &after[unit.len()..];
    }
    if total == 0 {
        return Err(format!("the time to live {text:?} is zero; it must be greater than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_ttl("500ms"), Ok(500));
        assert_eq!(parse_ttl("15m"), Ok(900_000));
        assert_eq!(parse_ttl("1h30m"), Ok(5_400_000));
        assert_eq!(parse_ttl("2d"), Ok(172_800_000));
        assert_eq!(parse_ttl("1m30s250ms"), Ok(90_250));
    }

    #[test]
    fn rejects_bad_literals() {
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "1.5h",
            "30m1h",
            "1m1m",
            "0s",
            "0h0m",
            " 1s",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
