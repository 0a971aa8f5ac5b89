//! PURE. The whole routing decision for one request: classify its text, then apply the policy
//! to the score, the caller's operating point and what the request needs. Shared by the
//! service, the offline commands (which replay the operating point in file order) and benches.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{
    catalog::{Catalog, Model, Tier},
    classify::{Classification, Classifier, Part, Shape},
    operating::OperatingPoints,
    policy::{self, Basis, Needs, TierChoice, Unservable, can_serve},
    request::{Block, ChatRequest, Role, ToolResultBlock},
};

/// Classifier, operating points and catalog together.
///
/// The classifier can be replaced while requests are being decided ([`Decider::swap_classifier`],
/// the weights reload): a decision loads it once, lock-free, and keeps that one to the end.
#[derive(Debug)]
pub struct Decider {
    classifier: ArcSwap<Classifier>,
    /// Each caller's threshold in force: fixed, or following a target strong share.
    pub operating: OperatingPoints,
    /// The two models.
    pub catalog: Catalog,
}

/// The core's decision for one request, handed to the edge (the service's reply and dispatch,
/// the offline commands): its classification, the policy's tier choice and the model to call.
#[derive(Debug)]
pub struct RoutingDecision<'a> {
    /// Score and reasons.
    pub classification: Classification,
    /// Tier, basis and effective threshold.
    pub choice: TierChoice,
    /// The chosen model.
    pub model: &'a Model,
    /// The version of the weights that scored the request.
    pub weights_version: Arc<str>,
    /// Whether the other tier may answer if every target of the chosen one fails: only for
    /// score-based choices (a forced or capability choice must hold) the other tier can serve.
    pub other_tier_ok: bool,
}

impl Decider {
    /// A decider from its parts.
    pub fn new(classifier: Classifier, operating: OperatingPoints, catalog: Catalog) -> Self {
        Self {
            classifier: ArcSwap::from_pointee(classifier),
            operating,
            catalog,
        }
    }

    /// The classifier in force.
    pub fn classifier(&self) -> Arc<Classifier> {
        self.classifier.load_full()
    }

    /// Puts `classifier` in force for the decisions that start from now on, and returns the
    /// one it replaces (decisions already under way finish with that one).
    pub fn swap_classifier(&self, classifier: Classifier) -> Arc<Classifier> {
        self.classifier.swap(Arc::new(classifier))
    }

    /// Scores the request with this decider's classifier.
    pub fn classify(&self, req: &ChatRequest) -> Classification {
        classify(&self.classifier.load(), req)
    }

    /// Classifies and decides; a score-based decision also enters the caller's operating point
    /// (so the order of calls matters, as the order of requests does online).
    pub fn decide(&self, req: &ChatRequest) -> Result<RoutingDecision<'_>, Unservable> {
        let classifier = self.classifier.load();
        let classification = classify(&classifier, req);
        let needs = needs(req);
        let score = classification.score();
        let caller = req.routing.caller.as_str();
        // Forced and capability-bound requests never look at the threshold, so they do not
        // enter the caller's window (their replies still show the threshold in force).
        let in_force = if policy::by_score(&needs, &self.catalog) {
            self.operating.observe(caller, score)
        } else {
            self.operating.in_force(caller)
        };
        let choice = policy::decide(score, in_force, &needs, &self.catalog)?;
        Ok(RoutingDecision {
            model: self.catalog.model(choice.tier),
            weights_version: Arc::clone(classifier.version()),
            other_tier_ok: choice.basis == Basis::Score
                && can_serve(choice.tier.other(), &needs, &self.catalog),
            classification,
            choice,
        })
    }
}

impl RoutingDecision<'_> {
    /// Whether a caller near its budget may have this decision sent fast instead: it is
    /// strong-bound by score or by force (not because only strong can serve it), and the fast
    /// tier can serve `req`.
    pub fn degradable(&self, req: &ChatRequest, catalog: &Catalog) -> bool {
        self.choice.tier == Tier::Strong
            && matches!(self.choice.basis, Basis::Score | Basis::Forced)
            && can_serve(Tier::Fast, &needs(req), catalog)
    }
}

impl<'a> RoutingDecision<'a> {
    /// The decision sent to the fast tier because the caller is near its spend budget
    /// ([`Basis::Budget`]); no fallback to the strong tier, which the budget is kept from.
    pub fn degrade(&mut self, catalog: &'a Catalog) {
        self.choice.tier = Tier::Fast;
        self.choice.basis = Basis::Budget;
        self.model = catalog.model(Tier::Fast);
        self.other_tier_ok = false;
    }
}

/// What `req` needs from a model apart from its text.
fn needs(req: &ChatRequest) -> Needs {
    Needs {
        mode: req.routing.mode,
        quality_bias: req.routing.quality_bias,
        max_tokens: req.inference.max_tokens,
        images: req.image_count() > 0,
        tools: req.tools.is_some()
            || req
                .messages
                .iter()
                .flat_map(|t| &t.content)
                .any(|b| matches!(b, Block::ToolUse(_) | Block::ToolResult(_))),
    }
}

/// Feeds every piece of the request's text to `classifier`, in conversation order: system
/// prompts, then turns oldest to newest, the newest ask marked: the last user turn that says
/// something. In an agent loop the last user turns carry only tool results; what was asked is
/// the user text before them.
pub fn classify(classifier: &Classifier, req: &ChatRequest) -> Classification {
    let mut acc = classifier.begin();
    for system in &req.system {
        acc.push(Part::System, system);
    }
    let says = |t: &&crate::request::Turn| {
        t.role == Role::User && t.content.iter().any(|b| matches!(b, Block::Text(_)))
    };
    let last_user = req
        .messages
        .iter()
        .rposition(|t| says(&t))
        .or_else(|| req.messages.iter().rposition(|t| t.role == Role::User));
    for (i, turn) in req.messages.iter().enumerate() {
        let part = match turn.role {
            Role::User => Part::User {
                last: Some(i) == last_user,
            },
            Role::Assistant => Part::Assistant,
        };
        for block in &turn.content {
            match block {
                Block::Text(text) => acc.push(part, text),
                Block::ToolResult(result) => {
                    for item in &result.content {
                        if let ToolResultBlock::Text(text) = item {
                            acc.push(Part::ToolResult, text);
                        }
                    }
                }
                Block::Image(_) | Block::ToolUse(_) => {}
            }
        }
    }
    acc.finish(Shape {
        turns: saturate(req.messages.len()),
        images: saturate(req.image_count()),
        tools: saturate(req.tool_count()),
        max_tokens: req.inference.max_tokens,
    })
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        classify::{Feature, Weights},
        policy::RoutingMode,
        request::{Inference, Routing, ToolChoice, ToolResult, ToolSpec, ToolUse, Tools, Turn},
    };

    fn ask_tokens(turns: Vec<Turn>, tools: Option<Tools>) -> f64 {
        let routing = Routing::new(RoutingMode::Auto, 0.0, String::new()).unwrap();
        let req =
            ChatRequest::new(turns, Vec::new(), Inference::default(), tools, routing).unwrap();
        classify(&Classifier::new(Weights::neutral()).unwrap(), &req).value(Feature::AskTokens)
    }

    #[test]
    fn in_an_agent_loop_the_ask_is_the_last_user_text() {
        let ask = || Turn {
            role: Role::User,
            content: vec![Block::Text(
                "Find the cheapest flight that lands before noon and fits the budget.".to_owned(),
            )],
        };
        let search = ToolSpec {
            name: "search".to_owned(),
            description: String::new(),
            input_schema: json!({"type": "object"}),
        };
        let looped = vec![
            ask(),
            Turn {
                role: Role::Assistant,
                content: vec![Block::ToolUse(ToolUse {
                    id: "t1".to_owned(),
                    name: "search".to_owned(),
                    input: json!({}),
                })],
            },
            Turn {
                role: Role::User,
                content: vec![Block::ToolResult(ToolResult {
                    tool_use_id: "t1".to_owned(),
                    content: vec![ToolResultBlock::Text("3 flights".to_owned())],
                    is_error: false,
                })],
            },
        ];
        let tools = Tools::new(vec![search], ToolChoice::Auto).unwrap();
        assert_eq!(
            ask_tokens(looped, Some(tools)),
            ask_tokens(vec![ask()], None)
        );
    }
}
