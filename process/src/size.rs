//! Byte sizes in flags (`--host-capacity 8GiB`, `--staging-bytes 256MiB`): one
//! syntax for every binary, the benchmark included.

/// Parses sizes such as `512MiB`, `2GiB`, `1.5GB`, `4096` (bytes), `0`.
/// Binary (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`) and decimal (`KB`, `MB`,
/// `GB`, `TB`) units, case-insensitive, a space allowed before the unit. The
/// `String` error suits clap's `value_parser` and names what is accepted.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size: expected e.g. 512MiB, 2GiB or 4096"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
            "unknown size unit '{other}' in '{text}': use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
        ))
        }
    };
    if !value.is_finite() || value < 0.0 {
        return Err(format!("'{text}' is not a non-negative size"));
    }
    let bytes = (value * mult as f64).round();
    // u64::MAX as f64 rounds up to 2^64, so `>=` catches every value that does not fit.
    if bytes >= u64::MAX as f64 {
        return Err(format!("'{text}' is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("512B"), Ok(512));
        assert_eq!(parse_byte_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_byte_size(" 2mib "), Ok(2 << 20));
        assert_eq!(parse_byte_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_byte_size("3G"), Ok(3 << 30));
        assert_eq!(parse_byte_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_byte_size("3 GB"), Ok(3_000_000_000));
        assert_eq!(parse_byte_size("0"), Ok(0));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        assert!(parse_byte_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_byte_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_byte_size("5 parsecs")
            .unwrap_err()
            .contains("unknown size unit 'parsecs'"));
        assert!(parse_byte_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
