//! Wall-clock times as users read and type them, in UTC, without a date-time crate.
//!
//! The civil-date conversions are Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (proleptic Gregorian calendar), exact for every date this program will ever see.

use std::time::{SystemTime, UNIX_EPOCH};

const MS_PER_DAY: i64 = 86_400_000;

/// Now, in Unix milliseconds.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `2026-11-27T02:16:11.123Z`.
pub fn format_unix_ms(ms: u64) -> String {
    let ms = ms as i64;
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// An RFC 3339 time, leniently: `2026-11-27`, `2026-11-27T02:16`, `2026-11-27 02:16:11`,
/// `2026-11-27T02:16:11.5Z`, `2026-11-27T03:16:11+01:00`. No offset means UTC.
/// Returns Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>, what: &str| -> Result<i64, String> {
        let part = b.get(range.clone()).ok_or_else(|| format!("{what} missing"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(format!("{what} is not a number"));
        }
        Ok(s[range].parse::<i64>().expect("checked digits"))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err("expected YYYY-MM-DD".into());
    }
    let (y, mo, d) = (num(0..4, "year")?, num(5..7, "month")?, num(8..10, "day")?);
    if !(1..=12).contains(&mo) {
        return Err(format!("month {mo} is not 1-12"));
    }
    if d < 1 || d > days_in_month(y, mo) {
        return Err(format!("day {d} is not in {y:04}-{mo:02}"));
    }
    let mut ms = days_from_civil(y, mo, d) * MS_PER_DAY;
    let mut rest = &s[10..];
    if !rest.is_empty() {
        let sep = rest.as_bytes()[0];
        if !matches!(sep, b'T' | b't' | b' ') {
            return Err("expected 'T' between the date and the time".into());
        }
        rest = &rest[1..];
        let t = rest.as_bytes();
        if t.len() < 5 || t[2] != b':' {
            return Err("expected HH:MM after the date".into());
        }
        let field = |r: std::ops::Range<usize>, what: &str| -> Result<i64, String> {
            let part = &rest[r];
            if part.bytes().all(|c| c.is_ascii_digit()) {
                Ok(part.parse().expect("checked digits"))
            } else {
                Err(format!("{what} is not a number"))
            }
        };
        let (h, mi) = (field(0..2, "hour")?, field(3..5, "minute")?);
        if h > 23 || mi > 59 {
            return Err(format!("{h:02}:{mi:02} is not a time of day"));
        }
        ms += (h * 3600 + mi * 60) * 1000;
        rest = &rest[5..];
        if let Some(r) = rest.strip_prefix(':') {
            if r.len() < 2 {
                return Err("expected two digits of seconds".into());
            }
            let sec = r[..2]
                .parse::<i64>()
                .ok()
                .filter(|_| r[..2].bytes().all(|c| c.is_ascii_digit()))
                .ok_or("seconds are not a number")?;
            if sec > 60 {
                return Err(format!("second {sec} is not 0-60"));
            }
            // A leap second (60) is read as the last millisecond of the minute.
            ms += if sec == 60 { 59_999 } else { sec * 1000 };
            rest = &r[2..];
            if let Some(r) = rest.strip_prefix(['.', ',']) {
                let digits = r.bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 {
                    return Err("expected digits after the decimal point".into());
                }
                if sec != 60 {
                    let frac = &r[..digits.min(3)];
                    let scale = 10i64.pow(3 - frac.len() as u32);
                    ms += frac.parse::<i64>().expect("checked digits") * scale;
                }
                rest = &r[digits..];
            }
        }
        match rest {
            "" | "Z" | "z" => {}
            _ => {
                let sign = match rest.as_bytes()[0] {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return Err(format!("unexpected {rest:?} after the time")),
                };
                let off = rest[1..].replace(':', "");
                if off.len() != 4 || !off.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(format!("offset {rest:?} is not +HH:MM or -HH:MM"));
                }
                let (oh, om) = (off[..2].parse::<i64>().unwrap(), off[2..].parse::<i64>().unwrap());
                if oh > 23 || om > 59 {
                    return Err(format!("offset {rest:?} is out of range"));
                }
                ms -= sign * (oh * 3600 + om * 60) * 1000;
            }
        }
    }
    u64::try_from(ms).map_err(|_| "before 1970-01-01T00:00:00Z".to_string())
}

/// A short human duration: `45s`, `3m12s`, `2h05m`, `4d03h`.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `z` days after 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        // date -u -d @1795745771 → Fri Nov 27 02:16:11 UTC 2026
        assert_eq!(format_unix_ms(1_795_745_771_123), "2026-11-27T02:16:11.123Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_unix_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn civil_round_trip_over_centuries() {
        for days in (-1000..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [0, 1_795_745_771_123, 951_782_400_000, 4_107_542_399_999] {
            assert_eq!(parse_rfc3339(&format_unix_ms(ms)).unwrap(), ms);
        }
    }

    #[test]
    fn parses_lenient_forms() {
        let base = 1_795_745_771_000;
        for (input, want) in [
            ("2026-11-27T02:16:11Z", base),
            ("2026-11-27t02:16:11z", base),
            ("2026-11-27 02:16:11", base),
            ("2026-11-27T02:16:11.5Z", base + 500),
            ("2026-11-27T02:16:11.123456789Z", base + 123),
            ("2026-11-27T03:16:11+01:00", base),
            ("2026-11-26T21:16:11-0500", base),
            ("2026-11-27T02:16", base - 11_000),
            ("2026-11-27", base - (2 * 3600 + 16 * 60 + 11) * 1000),
            ("2016-12-31T23:59:60Z", 1_483_228_799_999),
        ] {
            assert_eq!(parse_rfc3339(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_bad_times_with_a_reason() {
        for (input, needle) in [
            ("2026-13-01", "month 13"),
            ("2026-02-29", "day 29"),
            ("2026-11-27T24:00", "not a time of day"),
            ("2026-11-27X02:16", "'T'"),
            ("2026-11-27T02", "HH:MM"),
            ("2026-11-27T02:16:1", "two digits"),
            ("2026-11-27T02:16:11.Z", "digits after"),
            ("2026-11-27T02:16:11+1", "offset"),
            ("2026-11-27T02:16:11 UTC", "unexpected"),
            ("1969-12-31", "before 1970"),
            ("20261127", "YYYY-MM-DD"),
            ("2026-1a-01", "month is not a number"),
        ] {
            let e = parse_rfc3339(input).unwrap_err();
            assert!(e.contains(needle), "{input}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn short_durations() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(45), "45s");
        assert_eq!(format_duration(192), "3m12s");
        assert_eq!(format_duration(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(format_duration(4 * 86400 + 3 * 3600), "4d03h");
    }
}
