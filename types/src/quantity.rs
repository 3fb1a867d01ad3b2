//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`), parsed to thousandths of a unit.

/// A quantity in milli-units (`1` = 1000, `100m` = 100, `1Ki` = 1_024_000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(pub i128);

impl Quantity {
    pub fn milli(self) -> i128 {
        self.0
    }

    /// Whole units, rounded up (bytes for memory).
    pub fn units_ceil(self) -> i128 {
        (self.0 + 999).div_euclid(1000)
    }
}

pub const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

pub fn parse_quantity(s: &str) -> Result<Quantity, &'static str> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (negative, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    if digits.is_empty()
        || digits == "."
        || digits.matches('.').count() > 1
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(QUANTITY_MSG);
    }
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    // value = mantissa * 10^-frac_len, then scaled by the suffix; kept in milli-units.
    let mantissa: i128 = format!("{int_part}{frac_part}").parse().map_err(|_| QUANTITY_MSG)?;
    let frac_len = frac_part.len() as i32;
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().map_err(|_| QUANTITY_MSG)?),
        _ => return Err(QUANTITY_MSG),
    };
    let scale = exp10 + 3 - frac_len;
    let mut v = mantissa.checked_mul(mul).ok_or("quantity is too large")?;
    if scale >= 0 {
        v = v
            .checked_mul(10i128.checked_pow(scale as u32).ok_or("quantity is too large")?)
            .ok_or("quantity is too large")?;
    } else {
        let d = 10i128.checked_pow((-scale) as u32).unwrap_or(i128::MAX);
        v = (v + d - 1) / d; // round up, as the apiserver does for sub-milli precision
    }
    Ok(Quantity(if negative { -v } else { v }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_quantity("100m"), Ok(Quantity(100)));
        assert_eq!(parse_quantity("1"), Ok(Quantity(1000)));
        assert_eq!(parse_quantity("1.5"), Ok(Quantity(1500)));
        assert_eq!(parse_quantity("64Mi").unwrap().units_ceil(), 64 << 20);
        assert_eq!(parse_quantity("1k"), Ok(Quantity(1_000_000)));
        assert_eq!(parse_quantity("2e3"), Ok(Quantity(2_000_000)));
        assert_eq!(parse_quantity("1n"), Ok(Quantity(1)));
        for bad in ["", "12 GB", "1.2.3", "abc", "1Gb", "m"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
