//! Timestamps as the validation service writes them: RFC 3339 or PostgreSQL's
//! `timestamp::text` (`2026-01-15 10:00:00.123456`, with or without an offset; none means UTC).
//!
//! Two fixed formats do not justify a date crate in a module that must stay small: this parses
//! exactly them, to whole seconds since the epoch.

/// Seconds since the Unix epoch for `2026-01-15T10:00:00Z`, `2026-01-15 10:00:00+00`,
/// `2026-01-15 10:00:00.5-05:30` and the like; `None` for anything else.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let s = text.trim().as_bytes();
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
            let hours = num(i + 1..i + 3)?;
            let minutes = match s.get(i + 3..) {
                Some([]) => 0,
                Some([b':', ..]) if s.len() == i + 6 => num(i + 4..i + 6)?,
                Some(_) if s.len() == i + 5 => num(i + 3..i + 5)?,
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = hours * 3600 + minutes * 60;
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
    u64::try_from(secs).ok()
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
            ("2026-01-15 05:00:00-0500", base),
            (" 2026-01-15 10:00:00+00 ", base),
            ("1970-01-01T00:00:00Z", 0),
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
            "2026-01-15 10:00:00 UTC",
            "1969-12-31 23:59:59",
            "２０２６-01-15 10:00:00",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text}");
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
