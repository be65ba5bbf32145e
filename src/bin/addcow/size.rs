//! Sizes as qemu-img spells them: a number with an optional suffix, `k`/`K`, `M`, `G`, `T`, `P`,
//! `E` (powers of 1024, `B` for bytes) and an optional fraction (`1.5G`); and sizes for people
//! (`1 GiB`, `64 KiB`), as qemu-img prints them.

const UNITS: &str = "BKMGTPE";

/// Parses `10G`, `512`, `64k`, `1.5M` into bytes; a fraction must give a whole number of bytes.
pub fn parse(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size '{text}' (a number with an optional suffix k, M, G, T, P, E)");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" => 0,
        s if s.len() == 1 => UNITS.find(s).ok_or_else(bad)? as u32 * 10,
        _ => return Err(bad()),
    };
    let unit = 1u64 << shift;
    match number.split_once('.') {
        None => number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or_else(bad),
        Some(_) => {
            let n: f64 = number.parse().map_err(|_| bad())?;
            let bytes = n * unit as f64;
            match bytes.fract() == 0.0 && bytes < u64::MAX as f64 {
                true => Ok(bytes as u64),
                false => Err(bad()),
            }
        }
    }
}

/// `1 GiB`, `1.5 MiB`, `512 B`: three significant digits at most, like qemu-img.
pub fn human(bytes: u64) -> String {
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let name = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"][unit];
    let digits = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let text = format!("{value:.digits$}");
    let text = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => &text,
    };
    format!("{text} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_sizes() {
        assert_eq!(parse("512"), Ok(512));
        assert_eq!(parse("64k"), Ok(65536));
        assert_eq!(parse("10G"), Ok(10 << 30));
        assert_eq!(parse("1.5M"), Ok(3 << 19));
        assert_eq!(parse("2b"), Ok(2));
        assert!(parse("1X").is_err());
        assert!(parse("").is_err());
        assert!(parse("0.3").is_err());
    }

    #[test]
    fn prints_like_qemu() {
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(65536), "64 KiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(100), "100 B");
    }
}
