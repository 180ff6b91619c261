//! Cost maths: token usage × per-million prices, in exact decimals.
use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Decimal places kept for every stored USD amount.
pub const MONEY_SCALE: u32 = 10;

/// Prices of one model in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelPrice {
    pub input: Decimal,
    pub output: Decimal,
    pub cache_write_5m: Decimal,
    pub cache_write_1h: Decimal,
    pub cache_read: Decimal,
    /// Higher prices for every token of a request whose prompt is long.
    pub long_context: Option<LongContext>,
    /// Price version, recorded with every request billed by it.
    pub version: u64,
}

/// A long-context tier: when a request's prompt (input, cache writes and
/// cache reads) exceeds `threshold` tokens, all its tokens cost these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LongContext {
    pub threshold: u64,
    pub input: Decimal,
    pub output: Decimal,
    pub cache_write_5m: Decimal,
    pub cache_write_1h: Decimal,
    pub cache_read: Decimal,
}

/// Token counts of one request, in the Anthropic convention: `input`
/// excludes cache tokens, `cache_creation` includes the 1-hour part. The
/// one shape from the tap to the request log (the wire between the planes
/// keeps its own fields); serialised under the request log's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TokenUsage {
    #[serde(rename = "input_tokens")]
    pub input: u64,
    #[serde(rename = "output_tokens")]
    pub output: u64,
    /// Cache writes, the 1-hour ones included.
    #[serde(rename = "cache_creation_tokens")]
    pub cache_creation: u64,
    #[serde(rename = "cache_creation_1h_tokens")]
    pub cache_creation_1h: u64,
    #[serde(rename = "cache_read_tokens")]
    pub cache_read: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_creation + self.cache_read
    }

    /// Tokens of the prompt, whatever the cache did with them.
    pub fn prompt(&self) -> u64 {
        self.input + self.cache_creation + self.cache_read
    }
}

/// Rounds an amount to the stored precision.
pub fn round_money(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointNearestEven)
}

impl ModelPrice {
    /// Upstream cost of `usage` at these prices (the long-context tier's
    /// when the prompt is above its threshold).
    pub fn cost(&self, usage: &TokenUsage) -> Decimal {
        let (input, output, write_5m_price, write_1h_price, read) = match &self.long_context {
            Some(long) if usage.prompt() > long.threshold => (
                long.input,
                long.output,
                long.cache_write_5m,
                long.cache_write_1h,
                long.cache_read,
            ),
            _ => (
                self.input,
                self.output,
                self.cache_write_5m,
                self.cache_write_1h,
                self.cache_read,
            ),
        };
        let per_million = Decimal::from(1_000_000u32);
        let write_1h = usage.cache_creation_1h.min(usage.cache_creation);
        let write_5m = usage.cache_creation - write_1h;
        let sum = Decimal::from(usage.input) * input
            + Decimal::from(usage.output) * output
            + Decimal::from(write_5m) * write_5m_price
            + Decimal::from(write_1h) * write_1h_price
            + Decimal::from(usage.cache_read) * read;
        round_money(sum / per_million)
    }
}

/// Prices by model name, with fallbacks for dated and suffixed names.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: HashMap<String, ModelPrice>,
    /// Models whose price is known to exist but could not be read: they
    /// must not be served at no price.
    fenced: std::collections::HashSet<String>,
}

impl PriceTable {
    pub fn new(prices: HashMap<String, ModelPrice>) -> Self {
        Self {
            prices,
            fenced: Default::default(),
        }
    }

    /// Marks `model`'s price as unreadable.
    pub fn fence(&mut self, model: String) {
        self.fenced.insert(model);
    }

    /// Whether `model` would be billed by a price that could not be read
    /// (the same name resolution as [`PriceTable::lookup`]).
    pub fn is_fenced(&self, model: &str) -> bool {
        if self.fenced.is_empty() || self.prices.contains_key(model) {
            return false;
        }
        self.fenced.contains(model)
            || strip_version_suffix(model)
                .is_some_and(|base| self.fenced.contains(base) && !self.prices.contains_key(base))
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Every priced model name.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.prices.keys().map(String::as_str)
    }

    /// Exact name first, then the name without a date or `-latest` suffix,
    /// so `claude-sonnet-4-5-20250929` finds `claude-sonnet-4-5`. Never a
    /// shorter family name: `claude-opus-4-7` must not bill as `claude-opus-4`.
    /// The price table's own name for `model` (as `lookup` finds it).
    pub fn priced_name(&self, model: &str) -> Option<&str> {
        self.prices
            .get_key_value(model)
            .or_else(|| self.prices.get_key_value(strip_version_suffix(model)?))
            .map(|(name, _)| name.as_str())
    }

    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        self.prices
            .get(model)
            .or_else(|| self.prices.get(strip_version_suffix(model)?))
    }
}

/// `name-20250929`, `name-2024-08-06`, `name@20250514`, `name-latest` → `name`.
fn strip_version_suffix(model: &str) -> Option<&str> {
    if let Some((base, _)) = model.split_once('@') {
        return Some(base);
    }
    if let Some(base) = model.strip_suffix("-latest") {
        return Some(base);
    }
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (base, last) = model.rsplit_once('-')?;
    if digits(last, 8) {
        return Some(base);
    }
    let (base, month) = base.rsplit_once('-')?;
    let (base, year) = base.rsplit_once('-')?;
    (digits(last, 2) && digits(month, 2) && digits(year, 4)).then_some(base)
}

/// The user's cost: upstream cost × the user's price rate.
pub fn user_cost(upstream: Decimal, price_rate: Decimal) -> Decimal {
    round_money(upstream * price_rate)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn sonnet() -> ModelPrice {
        ModelPrice {
            input: d("3"),
            output: d("15"),
            cache_write_5m: d("3.75"),
            cache_write_1h: d("6"),
            cache_read: d("0.30"),
            long_context: Some(LongContext {
                threshold: 200_000,
                input: d("6"),
                output: d("22.5"),
                cache_write_5m: d("7.5"),
                cache_write_1h: d("12"),
                cache_read: d("0.6"),
            }),
            version: 1,
        }
    }

    #[test]
    fn long_prompts_cost_the_long_context_tier_for_every_token() {
        // 200,000 prompt tokens exactly: still the base tier.
        let at = TokenUsage {
            input: 150_000,
            cache_read: 50_000,
            output: 1_000,
            ..Default::default()
        };
        // 150000*3 + 50000*0.3 + 1000*15 = 480000 per million
        assert_eq!(sonnet().cost(&at), d("0.48"));
        // One more cache-write token crosses it: all tokens at long prices.
        let above = TokenUsage {
            cache_creation: 1,
            ..at
        };
        // 150000*6 + 50000*0.6 + 1000*22.5 + 1*7.5 = 952507.5 per million
        assert_eq!(sonnet().cost(&above), d("0.9525075"));
    }

    #[test]
    fn cost_of_each_token_class_by_hand() {
        let usage = TokenUsage {
            input: 1_000,
            output: 2_000,
            cache_creation: 3_000,
            cache_creation_1h: 1_000,
            cache_read: 10_000,
        };
        // 1000*3 + 2000*15 + 2000*3.75 + 1000*6 + 10000*0.3 = 49500 per million
        assert_eq!(sonnet().cost(&usage), d("0.0495"));
    }

    #[test]
    fn tiny_costs_stay_exact() {
        let usage = TokenUsage {
            input: 1,
            ..Default::default()
        };
        let price = ModelPrice {
            input: d("0.03"),
            ..Default::default()
        };
        assert_eq!(price.cost(&usage), d("0.00000003"));
        // Sums of many tiny costs do not drift.
        let total: Decimal = (0..1_000_000).map(|_| price.cost(&usage)).sum();
        assert_eq!(total, d("0.03"));
    }

    #[test]
    fn user_cost_applies_rate() {
        assert_eq!(user_cost(d("0.0495"), d("1.5")), d("0.07425"));
    }

    #[test]
    fn lookup_strips_date_suffixes() {
        let mut map = HashMap::new();
        map.insert("claude-sonnet-4-5".to_string(), sonnet());
        let table = PriceTable::new(map);
        assert!(table.lookup("claude-sonnet-4-5").is_some());
        assert!(table.lookup("claude-sonnet-4-5-20250929").is_some());
        assert!(table.lookup("claude-sonnet-4-5@20250929").is_some());
        assert!(table.lookup("claude-sonnet-4-5-latest").is_some());
        assert!(table.lookup("claude-sonnet-4").is_none());
        assert!(table.lookup("claude-sonnet-4-5-9").is_none());
        assert_eq!(strip_version_suffix("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert!(table.lookup("gpt-4o").is_none());
    }
}
