//! Timestamps as the validation service writes them: RFC 3339 or PostgreSQL's
//! `timestamptz::text` (`2026-01-15 10:00:00.123456+00`, any offset, or none, which means UTC),
//! and PostgreSQL's `infinity` for a session that never expires.
//!
//! Two fixed formats do not justify a date crate in a module that must stay small: this parses
//! exactly them, to whole seconds since the epoch. Anything else is not a timestamp, so an
//! answer carrying it is malformed rather than read as "no expiry".

/// When a session ends, as the validation service wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// PostgreSQL's `infinity`: never.
    Never,
    /// At this second since the epoch (0 for any moment before it: long past all the same).
    At(u64),
}

/// Reads an `expires_at` string: a timestamp ([`parse_timestamp`]) or `infinity`. `None` for
/// anything else, `-infinity` included (a session that expired before time began is not an
/// answer any server means).
pub fn parse_expiry(text: &str) -> Option<Expiry> {
    if text == "infinity" {
        return Some(Expiry::Never);
    }
    parse_timestamp(text).map(Expiry::At)
}

/// Seconds since the Unix epoch for `2026-01-15T10:00:00Z`, `2026-01-15 10:00:00+00`,
/// `2026-01-15 10:00:00.5-05:30` and the like; `None` for anything else. A moment before the
/// epoch is 0. The offset is `Z`, `±HH`, `±HH:MM` or `±HH:MM:SS` (PostgreSQL prints seconds for
/// historical zones); no offset means UTC. Nothing may surround it: neither service pads.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let s = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let year = num(0..4)?;
    let (month, day) = (num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') || s.get(13) != Some(&b':') || s.get(16) != Some(&b':') {
        return None;
    }
    if !matches!(s.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match s.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            // `±HH`, `±HH:MM` or `±HH:MM:SS`, and nothing after it.
            let mut parts = [0i64; 3];
            let mut at = i + 1;
            let mut count = 0;
            for (n, part) in parts.iter_mut().enumerate() {
                if n > 0 {
                    if at == s.len() {
                        break;
                    }
                    if s.get(at) != Some(&b':') {
                        return None;
                    }
                    at += 1;
                }
                *part = num(at..at + 2)?;
                at += 2;
                count = n + 1;
            }
            if at != s.len() || count == 0 {
                return None;
            }
            let [hours, minutes, seconds] = parts;
            if hours > 23 || minutes > 59 || seconds > 59 {
                return None;
            }
            let secs = hours * 3600 + minutes * 60 + seconds;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(u64::try_from(secs).unwrap_or(0))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn both_formats_and_offsets() {
        let base = 1_768_471_200; // 2026-01-15T10:00:00Z
        for (text, want) in [
            ("2026-01-15T10:00:00Z", base),
            ("2026-01-15t10:00:00z", base),
            ("2026-01-15 10:00:00+00", base),
            ("2026-01-15 10:00:00", base),
            ("2026-01-15 10:00:00.123456", base),
            ("2026-01-15T10:00:00.5+00:00", base),
            ("2026-01-15 12:30:00+02:30", base),
            ("2026-01-15 05:00:00-05", base),
            ("2026-01-15 07:00:00-03", base),
            ("2026-01-15 15:30:00+05:30", base),
            ("2026-01-15 15:30:00.25+05:30", base),
            ("2026-01-15 10:00:30+00:00:30", base),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31 23:59:59", 0),
            ("0001-01-01 00:00:00+00", 0),
            ("2024-02-29T00:00:00Z", 1_709_164_800),
            ("2000-03-01T00:00:00Z", 951_868_800),
        ] {
            assert_eq!(parse_timestamp(text), Some(want), "{text}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for text in [
            "",
            "tomorrow",
            "2026-01-15",
            "2026-13-01 00:00:00",
            "2026-02-30 00:00:00",
            "2025-02-29 00:00:00",
            "2026-01-15 24:00:00",
            "2026-01-15X10:00:00",
            "2026-01-15 10:00:00.",
            "2026-01-15 10:00:00+",
            "2026-01-15 10:00:00+1",
            "2026-01-15 10:00:00+01:0",
            "2026-01-15 10:00:00+01:",
            "2026-01-15 10:00:00+01:00:",
            "2026-01-15 10:00:00+01:00:00:00",
            "2026-01-15 10:00:00+0100",
            "2026-01-15 10:00:00+24",
            "2026-01-15 10:00:00+01:60",
            "2026-01-15 10:00:00Z+01",
            "2026-01-15 10:00:00 UTC",
            " 2026-01-15 10:00:00+00",
            "2026-01-15 10:00:00+00 ",
            "2026-01-15 10:00:00 BC",
            "1600000000",
            "1600000000.5",
            "infinity",
            "２０２６-01-15 10:00:00",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text}");
        }
    }

    #[test]
    fn expiry_is_a_timestamp_or_infinity() {
        assert_eq!(parse_expiry("infinity"), Some(Expiry::Never));
        assert_eq!(parse_expiry("2026-01-15 10:00:00+00"), Some(Expiry::At(1_768_471_200)));
        for text in ["-infinity", "Infinity", "+infinity", " infinity", "never", "", "null"] {
            assert_eq!(parse_expiry(text), None, "{text}");
        }
    }

    #[test]
    fn agrees_with_a_day_by_day_count() {
        // A plain reference: count days one by one from the epoch.
        let mut days = 0i64;
        for year in 1970..2100 {
            for month in 1..=12 {
                assert_eq!(days_from_civil(year, month, 1), days, "{year}-{month}");
                days += days_in_month(year, month);
            }
        }
    }
}
