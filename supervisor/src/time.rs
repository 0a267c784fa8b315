//! Wall-clock timestamps for events and state: RFC 3339 in UTC with
//! nanoseconds, written without a date crate (the civil-from-days algorithm
//! of Howard Hinnant's date library).

use std::fmt::Write;

/// A point in wall-clock time, in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i128);

impl Timestamp {
    /// Now, from CLOCK_REALTIME.
    pub fn now() -> Self {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        Timestamp(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
    }

    /// "2026-12-03T18:10:41.123456789Z".
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1_000_000_000) as i64;
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let mut out = String::with_capacity(30);
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            of_day / 3600,
            of_day % 3600 / 60,
            of_day % 60
        );
        out
    }
}

/// (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000000000Z");
        // 2026-12-03T18:10:41.123456789Z
        let t = Timestamp(1_796_321_441 * 1_000_000_000 + 123_456_789);
        assert_eq!(t.to_rfc3339(), "2026-12-03T18:10:41.123456789Z");
        // A leap day.
        assert_eq!(Timestamp(951_782_400 * 1_000_000_000).to_rfc3339(), "2000-02-29T00:00:00.000000000Z");
    }
}
