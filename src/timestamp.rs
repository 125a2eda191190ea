//! Timestamps as they appear in status and events: Unix milliseconds inside, RFC 3339
//! UTC in JSON and in print.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in JSON as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

/// Seconds since the Unix epoch now, as SFTP and known_hosts carry them.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn as_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Time from now until this moment (zero if past).
    pub fn until(self) -> Duration {
        self.as_system_time().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }

    /// Time from this moment until now (zero if in the future).
    pub fn elapsed(self) -> Duration {
        SystemTime::now().duration_since(self.as_system_time()).unwrap_or(Duration::ZERO)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        Timestamp(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
    }
}

// Howard Hinnant's civil-calendar conversions, for RFC 3339 without a date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `secs` since the Unix epoch as UTC year, month, day, hour, minute, second.
pub fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0 % 1000;
        let secs = (self.0 / 1000) as i64;
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        write!(f, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Timestamp, String> {
        let bad = || format!("bad timestamp '{s}': expected YYYY-MM-DDTHH:MM:SS.mmmZ");
        let s2 = s.strip_suffix('Z').ok_or_else(bad)?;
        let (date, time) = s2.split_once('T').ok_or_else(bad)?;
        let num = |t: &str| t.parse::<i64>().map_err(|_| bad());
        let dp: Vec<&str> = date.split('-').collect();
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let tp: Vec<&str> = hms.split(':').collect();
        if dp.len() != 3 || tp.len() != 3 {
            return Err(bad());
        }
        let days = days_from_civil(num(dp[0])?, num(dp[1])? as u32, num(dp[2])? as u32);
        let secs = days * 86_400 + num(tp[0])? * 3600 + num(tp[1])? * 60 + num(tp[2])?;
        let ms = num(&format!("{frac:0<3}")[..3])?;
        Ok(Timestamp((secs * 1000 + ms).max(0) as u64))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_roundtrip_as_rfc3339() {
        for ms in [0u64, 1, 999, 86_400_000, 951_782_400_123, 1_795_690_175_042, 4_102_444_800_000] {
            let t = Timestamp(ms);
            let s = t.to_string();
            assert_eq!(s.parse::<Timestamp>().unwrap(), t, "{s}");
        }
        assert_eq!(Timestamp(1_795_690_175_042).to_string(), "2026-11-26T10:49:35.042Z");
        assert_eq!(Timestamp(951_782_400_000).to_string(), "2000-02-29T00:00:00.000Z");
        assert!("yesterday".parse::<Timestamp>().is_err());
    }
}
