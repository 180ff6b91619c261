//! USD amounts as the admin API takes and gives them (a decimal string or a
//! JSON number, read exactly, always answered as a string), and as the
//! planes send them to each other (decimal text).
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// An amount of money. A string is read exactly as written; a JSON number
/// is read as the decimal it spells (`0.1` is 0.1, not the nearest binary
/// fraction), exact up to 15 significant digits — beyond that, send a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub Decimal);

impl Money {
    pub fn is_negative(&self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }
}

impl From<Money> for Decimal {
    fn from(m: Money) -> Decimal {
        m.0
    }
}

impl From<Decimal> for Money {
    fn from(d: Decimal) -> Money {
        Money(d)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What [`parse_decimal`] reads, as the OpenAPI document states it.
pub const DECIMAL_PATTERN: &str = r"^[ \t\n\r]*-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?[ \t\n\r]*$";

/// Parses a decimal written as text: plain (`1.50`) or scientific (`1.5e2`),
/// with JSON's whitespace around it and nothing else (no `+`, `_` or `.5`).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let text = text.trim_matches([' ', '\t', '\n', '\r']);
    if !is_decimal_text(text) {
        return None;
    }
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

fn is_decimal_text(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (number, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    digits(whole) && fraction.is_none_or(digits) && exponent_ok
}

/// An amount on the wire between the planes that is no decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a decimal amount")]
pub struct BadAmount(pub String);

/// An amount as the planes send it: decimal text, empty for zero.
pub fn from_wire(text: &str) -> Result<Decimal, BadAmount> {
    if text.is_empty() {
        return Ok(Decimal::ZERO);
    }
    Decimal::from_str(text).map_err(|_| BadAmount(text.to_string()))
}

/// A limit as the planes send it: decimal text, empty for none.
pub fn limit_from_wire(text: &str) -> Result<Option<Decimal>, BadAmount> {
    if text.is_empty() {
        return Ok(None);
    }
    from_wire(text).map(Some)
}

/// A limit as the planes send it.
pub fn limit_to_wire(limit: Option<Decimal>) -> String {
    limit.map(|d| d.to_string()).unwrap_or_default()
}

const EXPECTING: &str = "a decimal amount, as a string such as \"1.50\" or a number";

/// The largest amount the API takes, in USD (either sign): every store
/// holds it with ten decimal places.
pub const MONEY_LIMIT: i64 = 100_000_000;

fn bounded<E: serde::de::Error>(amount: Decimal) -> Result<Money, E> {
    if amount.abs() > Decimal::from(MONEY_LIMIT) {
        return Err(E::custom(format!(
            "{amount} is beyond the largest amount, {MONEY_LIMIT} USD"
        )));
    }
    Ok(Money(amount))
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTING)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Money, E> {
                parse_decimal(s)
                    .ok_or_else(|| E::custom(format!("{s:?} is not {EXPECTING}")))
                    .and_then(bounded)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Money, E> {
                bounded(Decimal::from(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Money, E> {
                bounded(Decimal::from(n))
            }
            /// The shortest text that reads back as this float is the
            /// decimal the client wrote (for up to 15 significant digits).
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Money, E> {
                if !n.is_finite() {
                    return Err(E::custom(EXPECTING));
                }
                parse_decimal(&n.to_string())
                    .ok_or_else(|| E::custom(format!("{n} is out of range")))
                    .and_then(bounded)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "schema")]
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(DECIMAL_PATTERN)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(-MONEY_LIMIT as f64))
                    .maximum(Some(MONEY_LIMIT as f64)),
            )
            .description(Some(
                "USD: a decimal string, or a number (exact up to 15 significant digits), \
                 at most 100000000 either way; answered as a string",
            ))
            .into()
    }
}

#[cfg(feature = "schema")]
impl utoipa::ToSchema for Money {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_amounts_are_exact_and_empty_means_zero_or_none() {
        assert_eq!(from_wire(""), Ok(Decimal::ZERO));
        assert_eq!(from_wire("0.1").unwrap().to_string(), "0.1");
        assert_eq!(from_wire("abc"), Err(BadAmount("abc".into())));
        assert_eq!(limit_from_wire(""), Ok(None));
        assert_eq!(limit_from_wire("2.5"), Ok(Some(Decimal::new(25, 1))));
        assert!(limit_from_wire("1e").is_err());
        for limit in [None, Some(Decimal::new(12345, 4))] {
            assert_eq!(limit_from_wire(&limit_to_wire(limit)), Ok(limit));
        }
    }

    fn read(json: &str) -> Result<Decimal, String> {
        serde_json::from_str::<Money>(json)
            .map(|m| m.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn strings_and_numbers_read_exactly_and_answer_as_strings() {
        for (json, text) in [
            ("\"0.1\"", "0.1"),
            ("0.1", "0.1"),
            ("2", "2"),
            ("-3", "-3"),
            ("12.50", "12.5"),
            ("\"12.50\"", "12.50"),
            ("1e-7", "0.0000001"),
            ("\"1.5e2\"", "150"),
            ("123456.7890123", "123456.7890123"),
            ("0.30000000000000004", "0.30000000000000004"),
        ] {
            let d = read(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(
                d.normalize(),
                Decimal::from_str(text).unwrap().normalize(),
                "{json}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Money(Decimal::from_str("0.1").unwrap())).unwrap(),
            "\"0.1\""
        );
        assert_eq!(read("100000000").unwrap(), Decimal::from(MONEY_LIMIT));
        for bad in [
            "\"lots\"",
            "true",
            "[1]",
            "null",
            "5.4e16",
            "\"-100000000.01\"",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// A string is read as an amount exactly when the documented
        /// pattern matches it (and its value fits a decimal).
        #[test]
        fn text_is_read_exactly_when_the_pattern_matches(
            text in "[-+0-9.eE _\t\n\r\u{b}\u{a0}x]{0,12}"
        ) {
            let pattern = regex::Regex::new(DECIMAL_PATTERN).unwrap();
            let read = parse_decimal(&text).is_some();
            proptest::prop_assert!(!read || pattern.is_match(&text), "{:?} read", text);
            // Twelve characters with a one-digit exponent always fit.
            let exponent = regex::Regex::new("[eE][-+]?([0-9]+)").unwrap();
            let small = exponent.captures(&text).is_none_or(|c| c[1].len() == 1);
            proptest::prop_assert!(!(pattern.is_match(&text) && small) || read, "{:?} refused", text);
        }
    }
}
