//! The two model tiers as the router calls them: which id to send (inference profile or base
//! model), prices, limits and capabilities. Built once from a validated [`Config`].

use std::{fmt, sync::Arc};

use crate::{
    config::{Config, ModelConfig},
    cost::{Prices, price_from_usd_per_mtok},
};

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

/// A catalog that cannot be built (the config was not validated first).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CatalogError(String);

impl Catalog {
    /// Builds the catalog from a validated config.
    pub fn from_config(config: &Config) -> Result<Self, CatalogError> {
        let geography = config.geography().ok_or_else(|| {
            CatalogError(format!("no geography for region {}", config.bedrock.region))
        })?;
        let model = |tier: Tier, m: &ModelConfig| -> Result<Model, CatalogError> {
            let invoke_id: Arc<str> = if m.on_demand {
                Arc::from(m.id.as_str())
            } else {
                Arc::from(format!("{}.{}", geography.prefix(), m.id))
            };
            Ok(Model {
                tier,
                invoke_id,
                prices: Prices {
                    input: price_from_usd_per_mtok(m.input_usd_per_mtok).map_err(CatalogError)?,
                    output: price_from_usd_per_mtok(m.output_usd_per_mtok).map_err(CatalogError)?,
                },
                max_output_tokens: m.max_output_tokens,
                images: m.images,
                tools: m.tools,
            })
        };
        Ok(Self {
            strong: model(Tier::Strong, &config.models.strong)?,
            fast: model(Tier::Fast, &config.models.fast)?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Geography;

    #[test]
    fn default_catalog_calls_us_profiles() {
        let catalog = Catalog::from_config(&Config::default()).expect("catalog");
        assert_eq!(
            &*catalog.model(Tier::Strong).invoke_id,
            "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
        );
        assert_eq!(
            &*catalog.model(Tier::Fast).invoke_id,
            "us.anthropic.claude-3-haiku-20240307-v1:0"
        );
        assert_eq!(
            catalog.model(Tier::Fast).prices,
            Prices {
                input: 250,
                output: 1_250
            }
        );
        assert_eq!(
            catalog.model(Tier::Strong).prices,
            Prices {
                input: 3_000,
                output: 15_000
            }
        );
    }

    #[test]
    fn apac_and_on_demand_ids() {
        let mut config = Config::default();
        config.bedrock.region = "ap-northeast-1".to_owned();
        config.models.fast.on_demand = true;
        let config = config.validate().expect("valid");
        assert_eq!(config.geography(), Some(Geography::Apac));
        let catalog = Catalog::from_config(&config).expect("catalog");
        assert_eq!(
            &*catalog.model(Tier::Strong).invoke_id,
            "apac.anthropic.claude-3-5-sonnet-20241022-v2:0"
        );
        assert_eq!(
            &*catalog.model(Tier::Fast).invoke_id,
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
    }
}
