//! Times on the command line as Docker takes them (`--since`, `--until`): a duration back
//! from now (`10m`, `1h30m`, `90s`), an RFC 3339 time (`2026-11-30T10:00:00Z`, also without
//! the zone, read as UTC), or Unix seconds (`1764496800`, `1764496800.5`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reads `text` as a point in time, durations counting back from `now`.
pub(crate) fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .ok_or_else(|| format!("'{text}' is not a time of the Unix clock"));
    }
    if let Ok(back) = humantime::parse_duration(t) {
        return now
            .checked_sub(back)
            .filter(|at| *at >= UNIX_EPOCH)
            .ok_or_else(|| format!("'{text}' reaches back before 1970"));
    }
    humantime::parse_rfc3339_weak(t).map_err(|_| {
        format!(
            "'{text}' is not a time: give a duration back from now (10m, 2h), an RFC 3339 time (2026-11-30T10:00:00Z) or Unix seconds"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_times_and_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_time("10m", now),
            Ok(UNIX_EPOCH + Duration::from_secs(1_000_000 - 600))
        );
        assert_eq!(
            parse_time("1h30m", now),
            Ok(UNIX_EPOCH + Duration::from_secs(1_000_000 - 5400))
        );
        assert_eq!(
            parse_time("86400", now),
            Ok(UNIX_EPOCH + Duration::from_secs(86400))
        );
        assert_eq!(
            parse_time("1970-01-02T00:00:00Z", now),
            Ok(UNIX_EPOCH + Duration::from_secs(86400))
        );
        assert_eq!(
            parse_time("1970-01-02T00:00:00", now),
            Ok(UNIX_EPOCH + Duration::from_secs(86400))
        );
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("-5", now).is_err());
        assert!(parse_time("100000h", now).is_err());
        assert!(parse_time("1e300", now).is_err());
        assert!(parse_time("NaN", now).is_err());
        let _ = parse_time("1e19", now); // no panic, whatever the platform's range
    }
}
