//! PURE. What a call cost, what it would have cost on the strong model, and the difference.
//!
//! Money is counted in whole nano-dollars (10⁻⁹ USD) so sums stay exact however many requests
//! are added up; a price must therefore be a multiple of $0.001 per million tokens.

use std::fmt;

/// An exact amount of money in nano-dollars (10⁻⁹ USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanodollars(pub u64);

impl Nanodollars {
    /// The amount in dollars, for replies; exact for any realistic per-request amount.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// The amount minus `other`, or zero when `other` is larger.
    pub fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Nanodollars {
    /// Formats as decimal dollars with all nine fractional digits, with no rounding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// A model's token prices, in nano-dollars per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    /// Price of one input token.
    pub input: u64,
    /// Price of one output token.
    pub output: u64,
}

/// Tokens read and written by one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub input_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
}

/// What one call cost and what the all-strong baseline would have cost for the same tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// The price actually paid, at the called model's prices.
    pub actual: Nanodollars,
    /// The same tokens at the strong model's prices.
    pub baseline: Nanodollars,
}

impl Cost {
    /// Prices `usage` at the called model's and at the strong model's prices.
    pub fn of(usage: Usage, called: Prices, strong: Prices) -> Self {
        Self {
            actual: price(usage, called),
            baseline: price(usage, strong),
        }
    }

    /// Baseline minus actual; zero if the called model was the dearer one.
    pub fn savings(&self) -> Nanodollars {
        self.baseline.saturating_sub(self.actual)
    }
}

/// Prices `usage` at `prices`. Saturates rather than wrapping: validated prices (at most
/// $1,000 per million tokens) keep a whole request far below the limit.
pub fn price(usage: Usage, prices: Prices) -> Nanodollars {
    let input = u64::from(usage.input_tokens).saturating_mul(prices.input);
    let output = u64::from(usage.output_tokens).saturating_mul(prices.output);
    Nanodollars(input.saturating_add(output))
}

/// Converts a price in USD per million tokens into nano-dollars per token, refusing prices the
/// exact counters cannot represent. The message suits a config error.
pub fn price_from_usd_per_mtok(usd_per_mtok: f64) -> Result<u64, String> {
    if !usd_per_mtok.is_finite() || usd_per_mtok < 0.0 {
        return Err(format!("{usd_per_mtok} is not a price (must be 0 or more)"));
    }
    let nano_per_token = usd_per_mtok * 1_000.0;
    let rounded = nano_per_token.round();
    if (nano_per_token - rounded).abs() > 1e-6 {
        return Err(format!(
            "{usd_per_mtok} is finer than the $0.001 per million tokens the cost counters can represent"
        ));
    }
    if rounded > 1e6 {
        return Err(format!(
            "{usd_per_mtok} USD per million tokens is above the $1,000 the cost counters allow"
        ));
    }
    Ok(rounded as u64)
}

/// A price in nano-dollars per token as USD per million tokens, the unit of the config and
/// the reports: the value the config wrote, for every price [`price_from_usd_per_mtok`] takes.
pub fn usd_per_mtok(nano_per_token: u64) -> f64 {
    nano_per_token as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SONNET: Prices = Prices {
        input: 3_000,
        output: 15_000,
    };
    const HAIKU: Prices = Prices {
        input: 250,
        output: 1_250,
    };

    #[test]
    fn prices_convert_exactly() {
        assert_eq!(price_from_usd_per_mtok(3.0), Ok(3_000));
        assert_eq!(price_from_usd_per_mtok(0.25), Ok(250));
        assert_eq!(price_from_usd_per_mtok(1.25), Ok(1_250));
        assert_eq!(price_from_usd_per_mtok(0.0), Ok(0));
        assert_eq!(price_from_usd_per_mtok(0.075), Ok(75));
        assert!(price_from_usd_per_mtok(0.0001).is_err());
        assert!(price_from_usd_per_mtok(-1.0).is_err());
        assert_eq!(price_from_usd_per_mtok(1_000.0), Ok(1_000_000));
        assert!(price_from_usd_per_mtok(1_000.001).is_err());
        assert!(price_from_usd_per_mtok(f64::NAN).is_err());
    }

    #[test]
    fn fast_call_costs_and_saves_by_hand() {
        // 1,000 in + 500 out on Haiku: 1000×250 + 500×1250 = 875,000 n$ = $0.000875.
        // On Sonnet: 1000×3000 + 500×15000 = 10,500,000 n$ = $0.0105.
        let cost = Cost::of(
            Usage {
                input_tokens: 1_000,
                output_tokens: 500,
            },
            HAIKU,
            SONNET,
        );
        assert_eq!(cost.actual, Nanodollars(875_000));
        assert_eq!(cost.baseline, Nanodollars(10_500_000));
        assert_eq!(cost.savings(), Nanodollars(9_625_000));
        assert_eq!(cost.actual.to_string(), "0.000875000");
    }

    #[test]
    fn strong_call_saves_nothing() {
        let cost = Cost::of(
            Usage {
                input_tokens: 12,
                output_tokens: 80,
            },
            SONNET,
            SONNET,
        );
        assert_eq!(cost.actual, cost.baseline);
        assert_eq!(cost.savings(), Nanodollars(0));
    }

    #[test]
    fn display_is_exact_for_large_sums() {
        assert_eq!(
            Nanodollars(12_345_678_901_234).to_string(),
            "12345.678901234"
        );
        assert_eq!(Nanodollars(0).to_string(), "0.000000000");
    }
}
