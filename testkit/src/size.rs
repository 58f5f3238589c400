//! Byte sizes on command lines (`--block-size 2MiB`) and in reports.
//! Units are binary (KiB = 1024); `K`, `M`, `G` are accepted as the same.

/// Parses `"512"`, `"512B"`, `"256KiB"`, `"2MiB"`, `"1GiB"` (case-insensitive;
/// also `k`/`m`/`g`). The `String` error suits clap's `value_parser`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad size {text:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} too large"))
}

/// `"8 MiB"` from 1 MiB up, else `"256 KiB"` (whole units, rounded down).
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size(" 2mib "), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3G"), Ok(3 << 30));
    }

    #[test]
    fn errors() {
        assert!(parse_size("MiB").unwrap_err().contains("bad size"));
        assert!(parse_size("2TiB")
            .unwrap_err()
            .contains("unknown unit \"tib\""));
        assert!(parse_size("99999999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(256 << 10), "256 KiB");
        assert_eq!(size_label(8 << 20), "8 MiB");
        assert_eq!(size_label(128 << 20), "128 MiB");
    }
}
