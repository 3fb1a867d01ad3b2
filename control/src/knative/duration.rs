//! Durations as Knative's ConfigMaps and annotations write them.

use std::time::Duration;

/// A Go-style duration as Knative's ConfigMaps and annotations write them: `60s`, `1m30s`,
/// `48h`, `500ms`, or a bare number of seconds.
pub fn parse(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let ns = crate::duration::parse_nanos(v)?;
    (ns >= 0).then(|| Duration::from_nanos(ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("48h"), Some(Duration::from_secs(48 * 3600)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        assert_eq!(parse("forever"), None);
        assert_eq!(parse("-1"), None);
    }
}
