//! Human units for the API's byte counts: parsing `64M`, `1GiB`, `1000000` and printing
//! `1.2 GiB`. Shared by the agent, the controller, the SDK and the CLI.

/// Parses a human size: plain bytes (`1000000`), binary units (`512k`, `1M`, `2GiB`: powers
/// of 1024, as `docker run -m` reads them) or decimal ones (`1MB` = 1,000,000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    // As Docker's `-m` (its RAMInBytes): a decimal number, then k, m, g or t with an
    // optional b or ib, all powers of 1024 (512MB is 512 MiB, 1.5G is 1.5 GiB).
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let not_a_size = || format!("'{text}' is not a size: use e.g. 1000000, 64M, 512MB or 1.5G");
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(not_a_size());
    }
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{text}': use k, M, G or T (KB/KiB, MB/MiB, ... mean the same: powers of 1024, as Docker reads them)"
            ))
        }
    };
    let too_large = || format!("size '{text}' is too large");
    match number.split_once('.') {
        None => {
            let n: u64 = number.parse().map_err(|_| not_a_size())?;
            n.checked_mul(factor).ok_or_else(too_large)
        }
        Some((whole, fraction)) => {
            let whole: u64 = whole.parse().map_err(|_| not_a_size())?;
            if fraction.len() > 9 || fraction.contains('.') {
                return Err(not_a_size());
            }
            let digits: u64 = fraction.parse().map_err(|_| not_a_size())?;
            let scale = 10u64.pow(fraction.len() as u32);
            let whole_bytes = whole.checked_mul(factor).ok_or_else(too_large)?;
            // factor * digits / scale, without overflow for any factor up to 2^40.
            let part = (u128::from(factor) * u128::from(digits) / u128::from(scale)) as u64;
            whole_bytes.checked_add(part).ok_or_else(too_large)
        }
    }
}

/// `1.2 GiB`, `64 MiB`, `512 KiB`, `100 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("512MB"), Ok(512 << 20), "as Docker reads -m");
        assert_eq!(parse_size("1.5G"), Ok(GIB + GIB / 2));
        assert_eq!(parse_size("0.5m"), Ok(MIB / 2));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        for bad in [".5G", "5.G", "1.2.3G", "1..5G", "abc", "", "1,5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("M").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(64 * MIB), "64 MiB");
        assert_eq!(human_bytes(GIB + GIB / 5), "1.2 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
