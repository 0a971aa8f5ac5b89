//! Feedback: the recent answered requests by id, and the `Feedback` RPC that joins a caller's
//! grade to one of them and hands a label row to the label store.
//!
//! **What is kept.** When a request is answered (the success tail both Converse and streams
//! end in), its features, score, input tokens, caller, weights version, the tier that
//! answered, and with `quality.store_prompts` up to [`MAX_PROMPT_BYTES`] of the newest ask's
//! text, are kept by request id for `quality.feedback_ttl_ms`, at most
//! `quality.feedback_capacity` requests (the oldest goes first). Request ids are at most 128
//! bytes ([`super::context::request_id`] replaces any longer one), caller names at most 64
//! characters, so an entry is bounded whatever clients send: about [`ENTRY_BYTES`], plus the
//! prompt. Nothing is kept without a label store: a feedback could go nowhere, so `Feedback`
//! answers FAILED_PRECONDITION instead of pretending to record it, and the request path
//! pays nothing.
//!
//! **How.** A map by id and a ring of ids in arrival order, behind one mutex held for O(1)
//! work and never across an await: arrivals are in time order, so the ring's front is the
//! oldest and both the TTL and the capacity evict from it. A reused request id replaces its
//! entry; the ring keeps the stale slot until it reaches the front, so stale slots count
//! against the capacity and the bound holds. The kept crates have no bounded map with
//! eviction order (`indexmap` removes from the front in O(n)); a ring and a `HashMap` (with
//! its random hasher: ids come from clients) are a few lines.
//!
//! **One feedback per request.** Label rows are appended to a store, never replaced, so a
//! second feedback for the same id gets ALREADY_EXISTS rather than a second row weighing the
//! request twice in training. A feedback the store's writer could not take (`stored: false`)
//! is not recorded and may be sent again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    context::Context,
    error::{Error, Feedback},
    service::RouterState,
};
use crate::{pb, telemetry};
use prompt_router_core::{
    catalog::Tier,
    classify::NUM_FEATURES,
    config::QualityConfig,
    decide::RoutingDecision,
    quality::label::{Label, LabelRow},
    request::{Block, ChatRequest, InvalidRequest},
};

/// Longest `reason` a feedback may carry, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Most bytes of the newest ask's text kept for a label row (with `quality.store_prompts`).
pub const MAX_PROMPT_BYTES: usize = 2048;
/// Longest request id the router gives or keeps (as [`super::context::request_id`] does).
const MAX_ID_BYTES: usize = 128;
/// An entry's memory without its prompt, rounded up from its worst case
/// (`tests::an_entry_fits_its_bound` adds it up): the id (at most 128 bytes and the `Arc`'s
/// header), the caller (at most 64 characters, 256 bytes), its map slot at the map's lowest
/// load (7/16, just after it doubles) and its ring slot at the ring's (1/2).
const ENTRY_BYTES: u64 = 1280;

/// The most memory the recent requests take with `quality`'s settings: none without a label
/// store, else `quality.feedback_capacity` full entries.
pub fn memory_bound(quality: &QualityConfig) -> u64 {
    if quality.store.is_none() {
        return 0;
    }
    let prompt = if quality.store_prompts {
        MAX_PROMPT_BYTES as u64
    } else {
        0
    };
    quality.feedback_capacity as u64 * (ENTRY_BYTES + prompt)
}

/// What a request's label row needs from its routing, taken when it is decided.
#[derive(Debug, Clone)]
pub struct Routed {
    features: [f64; NUM_FEATURES],
    score: f64,
    input_tokens: f64,
    caller: Box<str>,
    weights_version: Arc<str>,
    prompt: Option<Box<str>>,
}

impl Routed {
    /// What `routed`, the decision of `chat`, leaves for a label row; the newest ask's text
    /// with `store_prompts`.
    pub fn new(chat: &ChatRequest, routed: &RoutingDecision<'_>, store_prompts: bool) -> Self {
        Self {
            features: *routed.classification.values(),
            score: routed.classification.score(),
            input_tokens: routed.classification.input_tokens(),
            caller: chat.routing.caller.as_str().into(),
            weights_version: Arc::clone(&routed.weights_version),
            prompt: store_prompts.then(|| newest_ask(chat)),
        }
    }
}

/// The text of the last turn, cut to [`MAX_PROMPT_BYTES`] at a character boundary.
fn newest_ask(chat: &ChatRequest) -> Box<str> {
    let mut text = String::new();
    let blocks = chat
        .messages
        .last()
        .into_iter()
        .flat_map(|turn| &turn.content);
    for block in blocks {
        if let Block::Text(t) = block {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(t);
            if text.len() >= MAX_PROMPT_BYTES {
                break;
            }
        }
    }
    let mut end = text.len().min(MAX_PROMPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.into_boxed_str()
}

/// An answered request.
#[derive(Debug)]
struct Entry {
    routed: Routed,
    tier: Tier,
    /// Its slot in the ring: a reused id's older slot no longer matches.
    seq: u64,
    /// A feedback was handed to the store (or is being handed now).
    labelled: bool,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Arc<str>, Entry>,
    /// Every arrival, oldest first: its seq, its time, its id.
    ring: VecDeque<(u64, Instant, Arc<str>)>,
    next_seq: u64,
}

impl Inner {
    /// Drops the oldest slot, and its entry if the slot is still the entry's (a reused id's
    /// entry lives from its newest arrival).
    fn pop_oldest(&mut self) {
        if let Some((seq, _, id)) = self.ring.pop_front()
            && self.map.get(&id).is_some_and(|e| e.seq == seq)
        {
            self.map.remove(&id);
        }
    }

    /// Drops the arrivals `ttl` old or older at `now`.
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while self
            .ring
            .front()
            .is_some_and(|(_, at, _)| now.saturating_duration_since(*at) >= ttl)
        {
            self.pop_oldest();
        }
    }
}

/// The recent answered requests by id, for feedback to join to.
#[derive(Debug)]
pub struct Recent {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
    store_prompts: bool,
}

/// What a feedback found for its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No live entry.
    Unknown,
    /// The entry already has its feedback.
    AlreadyGiven,
}

impl Recent {
    /// Keeps at most `capacity` requests for `ttl`; prompts with `store_prompts`.
    pub fn new(capacity: usize, ttl: Duration, store_prompts: bool) -> Self {
        Self {
            inner: Mutex::default(),
            capacity: capacity.max(1),
            ttl,
            store_prompts,
        }
    }

    /// Whether label rows carry the newest ask's text.
    pub fn store_prompts(&self) -> bool {
        self.store_prompts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change leaves the map and ring consistent before the next line can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `routed`, answered by `tier`, under `request_id` from `now`.
    pub fn remember(&self, request_id: &str, routed: Routed, tier: Tier, now: Instant) {
        if request_id.len() > MAX_ID_BYTES {
            return;
        }
        let id: Arc<str> = Arc::from(request_id);
        let mut inner = self.lock();
        inner.expire(now, self.ttl);
        while inner.ring.len() >= self.capacity {
            inner.pop_oldest();
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.ring.push_back((seq, now, Arc::clone(&id)));
        inner.map.insert(
            id,
            Entry {
                routed,
                tier,
                seq,
                labelled: false,
            },
        );
    }

    /// Takes the feedback slot of `request_id` at `now`: its routing and tier, if it is live and
    /// has none yet. Until [`Recent::release`], a second claim finds it given.
    pub fn claim(&self, request_id: &str, now: Instant) -> Result<(Routed, Tier, u64), Lookup> {
        let mut inner = self.lock();
        inner.expire(now, self.ttl);
        let entry = inner.map.get_mut(request_id).ok_or(Lookup::Unknown)?;
        if entry.labelled {
            return Err(Lookup::AlreadyGiven);
        }
        entry.labelled = true;
        Ok((entry.routed.clone(), entry.tier, entry.seq))
    }

    /// Gives a claim back (its row was not taken), so the feedback can be sent again.
    pub fn release(&self, request_id: &str, seq: u64) {
        if let Some(entry) = self.lock().map.get_mut(request_id)
            && entry.seq == seq
        {
            entry.labelled = false;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

/// A feedback's grade in [0, 1], from exactly one of `score` and `thumb`.
fn grade(request: &pb::FeedbackRequest) -> Result<f64, InvalidRequest> {
    let thumb = pb::Thumb::try_from(request.thumb).map_err(|_| {
        InvalidRequest::new("thumb", format_args!("unknown value {}", request.thumb))
    })?;
    match (request.score, thumb) {
        (Some(_), pb::Thumb::Up | pb::Thumb::Down) => {
            Err(InvalidRequest::new("score", "set score or thumb, not both"))
        }
        (None, pb::Thumb::Unspecified) => Err(InvalidRequest::new(
            "score",
            "required: a score from 0 to 1, or a thumb",
        )),
        (Some(score), pb::Thumb::Unspecified) => {
            if (0.0..=1.0).contains(&score) {
                Ok(score)
            } else {
                Err(InvalidRequest::new(
                    "score",
                    format_args!("{score} is outside [0, 1]"),
                ))
            }
        }
        (None, pb::Thumb::Up) => Ok(1.0),
        (None, pb::Thumb::Down) => Ok(0.0),
    }
}

/// The feedback's checked fields: the request id, the grade, the reason.
fn check(request: pb::FeedbackRequest) -> Result<(String, f64, Option<String>), InvalidRequest> {
    let id = &request.request_id;
    if id.is_empty() {
        return Err(InvalidRequest::new("request_id", "required"));
    }
    if id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidRequest::new(
            "request_id",
            format_args!(
                "not a request id this router gives: 1 to {MAX_ID_BYTES} visible ASCII characters"
            ),
        ));
    }
    let score = grade(&request)?;
    if request.reason.len() > MAX_REASON_BYTES {
        return Err(InvalidRequest::new(
            "reason",
            format_args!("{} bytes; at most {MAX_REASON_BYTES}", request.reason.len()),
        ));
    }
    let reason = (!request.reason.is_empty()).then_some(request.reason);
    Ok((request.request_id, score, reason))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The label row of feedback `score` (with `reason`) on the request `routed`, answered by `tier`.
fn row(
    request_id: String,
    routed: Routed,
    tier: Tier,
    score: f64,
    reason: Option<String>,
) -> LabelRow {
    LabelRow {
        request_id,
        time_ms: unix_ms(),
        caller: routed.caller.into(),
        tier: tier.into(),
        score: routed.score,
        weights_version: routed.weights_version.to_string(),
        features: LabelRow::feature_map(&routed.features),
        input_tokens: routed.input_tokens,
        label: Label::Feedback { score, reason },
        prompt: routed.prompt.map(String::from),
    }
}

impl RouterState {
    /// What a request decided as `routed` leaves for its feedback, when feedback is recorded.
    pub(super) fn for_feedback(
        &self,
        chat: &ChatRequest,
        routed: &RoutingDecision<'_>,
    ) -> Option<Routed> {
        self.labels
            .is_on()
            .then(|| Routed::new(chat, routed, self.recent.store_prompts()))
    }

    /// The `Feedback` RPC: checks the grade, joins it to the request and hands its label row
    /// to the store.
    pub(super) fn feedback(
        &self,
        ctx: &Context,
        request: pb::FeedbackRequest,
    ) -> Result<pb::FeedbackResponse, Error> {
        let result = self.record_feedback(request);
        let outcome = match &result {
            Ok(true) => "stored",
            Ok(false) => "dropped",
            Err(Error::InvalidRequest(_)) => "invalid",
            Err(Error::Feedback(Feedback::Unknown(_))) => "not_found",
            Err(Error::Feedback(Feedback::AlreadyGiven(_))) => "already_given",
            Err(_) => "no_store",
        };
        metrics::counter!(telemetry::FEEDBACK_TOTAL, "outcome" => outcome).increment(1);
        tracing::info!(parent: &ctx.span, outcome, "feedback");
        result.map(|stored| pb::FeedbackResponse { stored })
    }

    fn record_feedback(&self, request: pb::FeedbackRequest) -> Result<bool, Error> {
        let (request_id, score, reason) = check(request)?;
        if !self.labels.is_on() {
            return Err(Error::Feedback(Feedback::NoStore));
        }
        let (routed, tier, seq) =
            self.recent
                .claim(&request_id, Instant::now())
                .map_err(|lookup| {
                    Error::Feedback(match lookup {
                        Lookup::Unknown => Feedback::Unknown(request_id.clone()),
                        Lookup::AlreadyGiven => Feedback::AlreadyGiven(request_id.clone()),
                    })
                })?;
        let offered = self
            .labels
            .offer(row(request_id.clone(), routed, tier, score, reason));
        if !offered {
            self.recent.release(&request_id, seq);
        }
        Ok(offered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(caller: &str) -> Routed {
        Routed {
            features: [0.5; NUM_FEATURES],
            score: 0.25,
            input_tokens: 12.0,
            caller: caller.into(),
            weights_version: Arc::from("w-00000000"),
            prompt: None,
        }
    }

    fn feedback(score: Option<f64>, thumb: pb::Thumb, reason: &str) -> pb::FeedbackRequest {
        pb::FeedbackRequest {
            request_id: "r-1".to_owned(),
            score,
            thumb: thumb as i32,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn the_oldest_goes_first_at_capacity() {
        let recent = Recent::new(3, Duration::from_secs(60), false);
        let t0 = Instant::now();
        for i in 0..5 {
            recent.remember(&format!("r{i}"), routed("a"), Tier::Fast, t0);
        }
        assert_eq!(recent.len(), 3);
        for gone in ["r0", "r1"] {
            assert_eq!(recent.claim(gone, t0).unwrap_err(), Lookup::Unknown);
        }
        for kept in ["r2", "r3", "r4"] {
            assert!(recent.claim(kept, t0).is_ok(), "{kept}");
        }
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let ttl = Duration::from_secs(10);
        let recent = Recent::new(100, ttl, false);
        let t0 = Instant::now();
        recent.remember("old", routed("a"), Tier::Strong, t0);
        recent.remember("new", routed("a"), Tier::Strong, t0 + ttl / 2);
        let later = t0 + ttl + Duration::from_millis(1);
        assert_eq!(recent.claim("old", later).unwrap_err(), Lookup::Unknown);
        assert!(recent.claim("new", later).is_ok());
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn reused_ids_keep_the_bound_and_the_newest_entry() {
        let recent = Recent::new(4, Duration::from_secs(60), false);
        let t0 = Instant::now();
        for i in 0..1000 {
            recent.remember("same", routed(&format!("c{i}")), Tier::Fast, t0);
            recent.remember(&format!("other{i}"), routed("o"), Tier::Fast, t0);
            let inner = recent.lock();
            assert!(inner.ring.len() <= 4 && inner.map.len() <= 4);
        }
        // The last arrival of a reused id is the one kept.
        let (r, _, _) = recent.claim("same", t0).expect("kept");
        assert_eq!(&*r.caller, "c999");
        // A reused id's entry lives from its newest arrival: an old stale slot expiring first
        // does not take it along.
        let ttl = Duration::from_secs(10);
        let recent = Recent::new(10, ttl, false);
        recent.remember("x", routed("first"), Tier::Fast, t0);
        recent.remember("x", routed("second"), Tier::Fast, t0 + ttl / 2);
        let (r, _, _) = recent
            .claim("x", t0 + ttl + Duration::from_millis(1))
            .unwrap();
        assert_eq!(&*r.caller, "second");
    }

    #[test]
    fn one_feedback_per_request_unless_released() {
        let recent = Recent::new(10, Duration::from_secs(60), false);
        let t0 = Instant::now();
        recent.remember("r", routed("a"), Tier::Fast, t0);
        let (_, _, seq) = recent.claim("r", t0).unwrap();
        assert_eq!(recent.claim("r", t0).unwrap_err(), Lookup::AlreadyGiven);
        recent.release("r", seq);
        assert!(recent.claim("r", t0).is_ok());
        // A new answer under the same id is a new request: it takes feedback again.
        recent.remember("r", routed("a"), Tier::Fast, t0);
        assert!(recent.claim("r", t0).is_ok());
    }

    #[test]
    fn ids_beyond_the_bound_are_not_kept() {
        let recent = Recent::new(10, Duration::from_secs(60), false);
        recent.remember(&"x".repeat(129), routed("a"), Tier::Fast, Instant::now());
        assert_eq!(recent.len(), 0);
    }

    #[test]
    fn an_entry_fits_its_bound() {
        use std::mem::size_of;
        let map_slot = size_of::<(Arc<str>, Entry)>() + 1;
        let ring_slot = size_of::<(u64, Instant, Arc<str>)>();
        let id = 2 * size_of::<usize>() + MAX_ID_BYTES;
        let caller = 4 * prompt_router_core::request::MAX_CALLER_LEN;
        let worst = map_slot * 16 / 7 + ring_slot * 2 + id + caller;
        println!("an entry takes at most {worst} bytes besides its prompt");
        assert!(worst as u64 <= ENTRY_BYTES, "{worst}");
    }

    #[test]
    fn grades_name_the_field_at_fault() {
        use pb::Thumb::{Down, Unspecified, Up};
        assert_eq!(grade(&feedback(Some(0.25), Unspecified, "")), Ok(0.25));
        assert_eq!(grade(&feedback(None, Up, "")), Ok(1.0));
        assert_eq!(grade(&feedback(None, Down, "")), Ok(0.0));
        for (request, field) in [
            (feedback(Some(1.5), Unspecified, ""), "score"),
            (feedback(Some(f64::NAN), Unspecified, ""), "score"),
            (feedback(Some(-1e-9), Unspecified, ""), "score"),
            (feedback(None, Unspecified, ""), "score"),
            (feedback(Some(0.5), Up, ""), "score"),
            (
                pb::FeedbackRequest {
                    thumb: 7,
                    ..feedback(None, Unspecified, "")
                },
                "thumb",
            ),
            (
                feedback(Some(0.5), Unspecified, &"y".repeat(MAX_REASON_BYTES + 1)),
                "reason",
            ),
            (
                pb::FeedbackRequest {
                    request_id: String::new(),
                    ..feedback(Some(0.5), Unspecified, "")
                },
                "request_id",
            ),
            (
                pb::FeedbackRequest {
                    request_id: "has space".to_owned(),
                    ..feedback(Some(0.5), Unspecified, "")
                },
                "request_id",
            ),
        ] {
            let err = check(request.clone()).unwrap_err();
            assert_eq!(err.field(), field, "{request:?}: {err}");
        }
        let (_, _, reason) = check(feedback(
            Some(0.5),
            Unspecified,
            &"y".repeat(MAX_REASON_BYTES),
        ))
        .unwrap();
        assert_eq!(reason.map(|r| r.len()), Some(MAX_REASON_BYTES));
        let (_, _, reason) = check(feedback(Some(0.5), Unspecified, "")).unwrap();
        assert_eq!(reason, None);
    }

    #[test]
    fn a_long_ask_is_cut_at_a_character_boundary() {
        let chat = |text: String| {
            let request = pb::ConverseRequest {
                messages: vec![pb::Message {
                    role: pb::Role::User as i32,
                    content: vec![pb::ContentBlock {
                        block: Some(pb::content_block::Block::Text(text)),
                    }],
                }],
                ..Default::default()
            };
            super::super::convert::chat_request(request, &Default::default()).unwrap()
        };
        let cut = newest_ask(&chat("é".repeat(MAX_PROMPT_BYTES)));
        assert!(cut.len() <= MAX_PROMPT_BYTES && cut.len() >= MAX_PROMPT_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(&*newest_ask(&chat("short".to_owned())), "short");
    }
}
