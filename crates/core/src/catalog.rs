//! The two model tiers as the router calls them: which id to send (inference profile or base
//! model), prices, limits and capabilities. Built once, by the checked config.

use std::{fmt, sync::Arc};

use crate::cost::Prices;

/// A model tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The strong, dearer model.
    Strong,
    /// The fast, cheaper model.
    Fast,
}

impl Tier {
    /// The metric-label and log form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strong => "strong",
            Self::Fast => "fast",
        }
    }

    /// The tier a request falls back to, or escalates to, when this one cannot answer it.
    pub fn other(self) -> Self {
        match self {
            Self::Strong => Self::Fast,
            Self::Fast => Self::Strong,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model as the router calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Its tier.
    pub tier: Tier,
    /// The id sent to Bedrock: the geography's inference profile, or the base id when on demand.
    /// Shared, because every request's metric labels carry it.
    pub invoke_id: Arc<str>,
    /// Token prices.
    pub prices: Prices,
    /// Most output tokens in one call.
    pub max_output_tokens: u32,
    /// Accepts images.
    pub images: bool,
    /// Supports tool use.
    pub tools: bool,
}

/// The strong and the fast model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    strong: Model,
    fast: Model,
}

impl Catalog {
    /// The catalog of `strong` and `fast`; [`crate::config::Config`] builds it from the
    /// `models` section.
    pub fn new(strong: Model, fast: Model) -> Self {
        Self { strong, fast }
    }

    /// The model of `tier`.
    pub fn model(&self, tier: Tier) -> &Model {
        match tier {
            Tier::Strong => &self.strong,
            Tier::Fast => &self.fast,
        }
    }

    /// Both models, strong first.
    pub fn models(&self) -> [&Model; 2] {
        [&self.strong, &self.fast]
    }
}
