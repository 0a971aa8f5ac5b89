//! Replies: the decision and the answer in `router.v1` terms. Building a reply records nothing;
//! the service does that.

use std::sync::Arc;

use super::{
    dispatch::{Resilience, Walk},
    record::Record,
};
use crate::{backend::OutputBlock, pb};
use prompt_router_core::{
    catalog::{Catalog, Tier},
    cost::{Cost, Usage},
    decide::RoutingDecision,
    operating::Point,
    policy::Basis,
    resilience::{Move, Target},
};

/// How many top features a decision names.
const REASONS: usize = 3;

/// The routing decision of a request, before and after its calls.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The decision as the policy made it (tier, model and region of the first choice).
    pub decision: pb::Decision,
    /// The policy's basis, kept for a request answered by its first choice.
    basis: Basis,
}

/// Who answered a request: the decision as answered, for the reply and the record.
#[derive(Debug)]
pub struct Answered {
    /// The decision naming the target that answered.
    pub decision: pb::Decision,
    /// The fallback that led there, if any.
    pub fallback: Option<pb::Fallback>,
    /// The tier that answered.
    pub tier: Tier,
    /// Why that tier: the policy's basis, or a fallback.
    pub basis: Basis,
    /// The model that answered.
    pub model: Arc<str>,
}

impl Decided {
    /// The decision of `routed` for `caller`, its first choice in the primary region.
    pub fn new(routed: &RoutingDecision<'_>, caller: &str, resilience: &Resilience) -> Self {
        let first = Target {
            tier: routed.choice.tier,
            region: 0,
        };
        Self {
            decision: pb::Decision {
                tier: pb_tier(routed.choice.tier) as i32,
                model_id: routed.model.invoke_id.to_string(),
                score: routed.classification.score(),
                threshold: routed.choice.threshold,
                reasons: routed
                    .classification
                    .top_reasons(REASONS)
                    .map(|r| pb::Reason {
                        feature: r.feature.name().to_owned(),
                        contribution: r.effect,
                        description: r.feature.description().to_owned(),
                        toward: pb_tier(r.toward()) as i32,
                    })
                    .collect(),
                basis: pb_basis(routed.choice.basis) as i32,
                region: resilience.region(first).to_string(),
                operating_point: pb_operating_point(routed.choice.point) as i32,
                weights_version: routed.weights_version.to_string(),
                caller: caller.to_owned(),
            },
            basis: routed.choice.basis,
        }
    }

    /// The decision as answered by `target`, the end of `walk`.
    pub fn answered(
        self,
        catalog: &Catalog,
        resilience: &Resilience,
        walk: &Walk,
        target: Target,
    ) -> Answered {
        let first = walk.first();
        let model = catalog.model(target.tier);
        let basis = if target.tier == first.tier {
            self.basis
        } else {
            Basis::Fallback
        };
        let decision = pb::Decision {
            tier: pb_tier(target.tier) as i32,
            model_id: model.invoke_id.to_string(),
            basis: pb_basis(basis) as i32,
            region: resilience.region(target).to_string(),
            ..self.decision
        };
        let fallback = Move::between(first, target).map(|kind| pb::Fallback {
            kind: match kind {
                Move::Region => pb::FallbackKind::Region,
                Move::Degrade => pb::FallbackKind::Degrade,
                Move::Escalate => pb::FallbackKind::Escalate,
            } as i32,
            from_model_id: catalog.model(first.tier).invoke_id.to_string(),
            from_region: resilience.region(first).to_string(),
            reason: walk.fallback_reason().to_owned(),
        });
        Answered {
            decision,
            fallback,
            tier: target.tier,
            basis,
            model: Arc::clone(&model.invoke_id),
        }
    }
}

/// What a successful reply says after its content, the same for Converse's reply and a
/// stream's metadata.
#[derive(Debug)]
pub struct Summary {
    /// Tokens in and out.
    pub usage: pb::Usage,
    /// What the answer cost.
    pub cost_usd: f64,
    /// What it would have cost from the strong model.
    pub baseline_cost_usd: f64,
    /// Where the time went.
    pub latency: pb::Latency,
    /// Upstream calls made.
    pub attempts: u32,
    /// The request id.
    pub request_id: String,
    /// The fallback that led to the model that answered, if any.
    pub fallback: Option<pb::Fallback>,
}

impl Summary {
    /// The summary of a request answered with `usage` costing `cost`, as `record` saw it.
    pub fn new(
        record: &Record,
        usage: Usage,
        cost: Cost,
        request_id: &str,
        fallback: Option<pb::Fallback>,
    ) -> Self {
        Self {
            usage: pb_usage(usage),
            cost_usd: cost.actual.as_usd(),
            baseline_cost_usd: cost.baseline.as_usd(),
            latency: latency(record),
            attempts: record.attempts(),
            request_id: request_id.to_owned(),
            fallback,
        }
    }

    /// A Converse reply of `content` and `stop_reason`, decided as `decision`.
    pub fn converse(
        self,
        content: Vec<OutputBlock>,
        stop_reason: String,
        decision: pb::Decision,
    ) -> pb::ConverseResponse {
        pb::ConverseResponse {
            message: Some(pb::Message {
                role: pb::Role::Assistant as i32,
                content: content.into_iter().map(content_block).collect(),
            }),
            stop_reason,
            usage: Some(self.usage),
            decision: Some(decision),
            cost_usd: self.cost_usd,
            baseline_cost_usd: self.baseline_cost_usd,
            latency: Some(self.latency),
            attempts: self.attempts,
            request_id: self.request_id,
            fallback: self.fallback,
        }
    }

    /// A stream's closing metadata.
    pub fn stream_metadata(self) -> pb::StreamMetadata {
        pb::StreamMetadata {
            usage: Some(self.usage),
            cost_usd: self.cost_usd,
            baseline_cost_usd: self.baseline_cost_usd,
            latency: Some(self.latency),
            attempts: self.attempts,
            request_id: self.request_id,
            fallback: self.fallback,
        }
    }
}

fn content_block(block: OutputBlock) -> pb::ContentBlock {
    let block = match block {
        OutputBlock::Text(text) => pb::content_block::Block::Text(text),
        OutputBlock::ToolUse { id, name, input } => {
            pb::content_block::Block::ToolUse(pb::ToolUse {
                tool_use_id: id,
                name,
                input_json: input.to_string(),
            })
        }
    };
    pb::ContentBlock { block: Some(block) }
}

fn pb_tier(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Strong => pb::Tier::Strong,
        Tier::Fast => pb::Tier::Fast,
    }
}

fn pb_basis(basis: Basis) -> pb::DecisionBasis {
    match basis {
        Basis::Score => pb::DecisionBasis::Score,
        Basis::Forced => pb::DecisionBasis::Forced,
        Basis::Capability => pb::DecisionBasis::Capability,
        Basis::Fallback => pb::DecisionBasis::Fallback,
        Basis::Budget => pb::DecisionBasis::Budget,
    }
}

fn pb_operating_point(point: Point) -> pb::OperatingPoint {
    match point {
        Point::Fixed => pb::OperatingPoint::Fixed,
        Point::TargetShare => pb::OperatingPoint::TargetShare,
        Point::WarmupPooled => pb::OperatingPoint::WarmupPooled,
        Point::WarmupFixed => pb::OperatingPoint::WarmupFixed,
    }
}

fn pb_usage(usage: Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
    }
}

fn latency(record: &Record) -> pb::Latency {
    let total = record.started().elapsed();
    pb::Latency {
        upstream_ms: record.upstream().as_secs_f64() * 1e3,
        overhead_us: record.overhead(total).as_secs_f64() * 1e6,
        sdk_us: record.sdk().as_secs_f64() * 1e6,
        router_us: record.own(total).as_secs_f64() * 1e6,
        time_to_first_token_ms: record
            .time_to_first_token()
            .map_or(0.0, |t| t.as_secs_f64() * 1e3),
        total_ms: total.as_secs_f64() * 1e3,
        retry_wait_ms: record.waited().as_secs_f64() * 1e3,
    }
}
