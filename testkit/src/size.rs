//! Byte sizes in reports. (Sizes on command lines are parsed by
//! `kvtier_process::size::parse_byte_size`, the syntax every binary's flags use.)

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
    fn labels() {
        assert_eq!(size_label(256 << 10), "256 KiB");
        assert_eq!(size_label(8 << 20), "8 MiB");
        assert_eq!(size_label(128 << 20), "128 MiB");
    }
}
