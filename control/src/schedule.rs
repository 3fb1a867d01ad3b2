//! Cron schedules as CronJobs write them: five fields or a macro (`@hourly`), in an IANA time
//! zone (UTC when none is named), parsed by croner; shared by admission and the CronJob
//! controller.

use chrono::{DateTime, Utc};

/// A parsed schedule in its time zone.
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parse a CronJob's `schedule` (five fields or a `@daily`-style macro) and `timeZone`.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        if schedule.contains("TZ=") || schedule.contains("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(schedule.trim())
            .map_err(|e| format!("unparseable schedule {schedule:?}: {e}"))?;
        let tz = match time_zone {
            None | Some("") => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("unknown time zone {name}"))?,
        };
        Ok(Self { cron, tz })
    }

    /// The latest scheduled time at or before `now`.
    pub fn latest(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first scheduled time after `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Whether a schedule and time zone are valid, for admission: the reason when not.
pub fn check(schedule: &str, time_zone: Option<&str>) -> Option<String> {
    Schedule::parse(schedule, time_zone).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_in_their_time_zone() {
        let s = Schedule::parse("30 9 * * 1-5", Some("Asia/Shanghai")).unwrap();
        // 09:30 in Shanghai is 01:30 UTC; 2026-12-07 is a Monday.
        assert_eq!(s.next(at("2026-12-06T20:00:00Z")), Some(at("2026-12-07T01:30:00Z")));
        let every = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            every.latest(at("2026-12-06T20:07:10Z")),
            Some(at("2026-12-06T20:05:00Z"))
        );
        assert_eq!(
            every.latest(at("2026-12-06T20:05:00Z")),
            Some(at("2026-12-06T20:05:00Z"))
        );
        assert!(Schedule::parse("@hourly", None).is_ok());
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(check("61 * * * *", None).unwrap().contains("unparseable"));
        assert!(check("* * * * * *", None).is_some());
        assert!(check("CRON_TZ=UTC * * * * *", None).unwrap().contains("timeZone"));
        assert!(check("* * * * *", Some("Mars/Olympus")).unwrap().contains("time zone"));
    }
}
