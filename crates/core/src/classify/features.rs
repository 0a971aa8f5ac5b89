//! Feature extraction: one pass over each text piece, counting byte classes and keyword-family
//! matches, then turning the weighted counts into feature values.
//!
//! **The ask and the material.** What a request supplies (a system prompt, pasted documents,
//! earlier turns, tool output) says little about how hard it is; what it asks of that says a
//! lot. Each piece is split into its *edges*, its first and last paragraphs of at most
//! [`ASK_EDGE`] bytes ([`edges`]), where a request states what it wants ("Summarise these
//! notes:", "…which line causes the leak?"), and its *middle*, which in a long piece is pasted
//! material. The edges' cues are weighted by part (the newest user
//! turn's weigh most); the middle's count only for its size and its code. The length of the
//! newest ask and the size of everything else are two separate features.
//!
//! Speed: the pass splits a region into four equal segments and walks them in lock-step, so the
//! four Aho-Corasick DFA walks (each a chain of dependent table loads) overlap in the CPU instead
//! of running one after another. Each segment after the first replays the last
//! `longest pattern − 1` bytes of the segment before it without counting, so a match that spans a
//! segment border is counted exactly once, by the segment it ends in.
//!
//! Keyword families are counted in the edges and in the first and last [`KEYWORD_WINDOW`] bytes
//! of the middle; byte classes cover every byte. The keyword automaton is
//! large (hundreds of case-insensitive patterns, a DFA that runs at L2 speed), and the middle of
//! a long piece is pasted material, whose vocabulary says what the document is about rather
//! than what is asked.

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind};

use super::keywords::{self, Family, NUM_FAMILIES, PatternInfo};

/// Byte classes counted per piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Class {
    Other,
    Question,
    Utf8Lead,
    Utf8Symbol,
    Utf8Cont,
}

/// Number of byte classes.
const NUM_CLASSES: usize = 5;

/// Byte → class.
static CLASS: [u8; 256] = {
    let mut t = [Class::Other as u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'?' => Class::Question,
            0x80..=0xBF => Class::Utf8Cont,
            // U+0080–U+00BF (°, ±, ·, µ, no-break space) and U+2000–U+2FFF (typographic
            // quotes and dashes, maths operators, arrows): symbols, not letters of a script.
            0xC2 | 0xE2 => Class::Utf8Symbol,
            0xC0..=0xFF => Class::Utf8Lead,
            _ => Class::Other,
        } as u8;
        b += 1;
    }
    t
};

/// Declares [`Feature`] from one table, in vector order: variant, stable name, description.
macro_rules! features {
    ($($variant:ident = $name:literal, $description:literal;)*) => {
        /// One feature of the classifier's vector. `feature as usize` ([`Feature::index`]) is its
        /// index in every per-feature array ([`Feature::ALL`] order); [`Feature::name`] is its
        /// stable name in the weights file, replies and `classify` output.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Feature {
            $(#[doc = $description] $variant,)*
        }

        impl Feature {
            /// Every feature, in vector order (`ALL[i].index() == i`).
            pub const ALL: [Feature; NUM_FEATURES] = [$(Feature::$variant,)*];

            /// The stable name: the weights file, replies and `classify` output use it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Feature::$variant => $name,)*
                }
            }

            /// What the feature says, in words a caller understands; a positive contribution
            /// pushes towards the strong model.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Feature::$variant => $description,)*
                }
            }
        }
    };
}

/// Number of features.
pub const NUM_FEATURES: usize = 21;

features! {
    AskTokens = "ask_tokens", "length of the newest request";
    ContextTokens = "context_tokens", "size of the supplied context (system prompt, earlier turns, pasted material, tool output)";
    Code = "code", "code";
    Questions = "questions", "more than one question asked";
    MultiPart = "multipart", "several parts or steps asked for";
    Constraints = "constraints", "requirements the answer must meet";
    Proof = "proof", "asks for a proof or a derivation";
    Reasoning = "reasoning", "asks why, what follows from what, or for step-by-step reasoning";
    Analysis = "analysis", "asks to compare, evaluate or weigh trade-offs";
    Design = "design", "asks to design a system (architecture, scaling, consistency, failure handling)";
    Diagnose = "diagnose", "asks to debug or diagnose a failure";
    Build = "build", "asks to write code, a query or tests";
    Tricky = "tricky", "names what makes a problem tricky (concurrency, complexity, optimality, edge cases)";
    Transform = "transform", "asks to summarise, translate, extract, classify or rewrite supplied material";
    Chat = "chat", "greeting, thanks or small talk";
    Lookup = "lookup", "asks for a fact or a detail to look up";
    LongOutput = "long_output", "asks for a long or complete piece of writing";
    Turns = "turns", "earlier turns in the conversation";
    Images = "images", "images attached";
    Tools = "tools", "tools offered";
    MaxTokens = "max_tokens", "requested output length";
}

impl Feature {
    /// The feature's index in per-feature arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The feature with this [`name`](Self::name), if any (reading a weights file).
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Raw counts for one region of a text piece.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PieceCounts {
    classes: [u32; NUM_CLASSES],
    families: [u32; NUM_FAMILIES],
    bytes: u32,
}

impl PieceCounts {
    /// Code syntax matches in this region.
    pub(crate) fn code(&self) -> u32 {
        self.families[Family::CodeSyntax as usize]
    }

    /// Estimated tokens of this region (see [`estimate_tokens`]).
    pub(crate) fn tokens(&self) -> f64 {
        let lead = f64::from(
            self.classes[Class::Utf8Lead as usize] + self.classes[Class::Utf8Symbol as usize],
        );
        let cont = f64::from(self.classes[Class::Utf8Cont as usize]);
        estimate_tokens(f64::from(self.bytes) - lead - cont, lead)
    }
}

/// The counts of one piece: its edges (first and last [`ASK_EDGE`] bytes) and its middle.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Regions {
    pub edges: PieceCounts,
    pub middle: PieceCounts,
}

/// Token estimate used everywhere (features, cost): about four ASCII characters per token, and
/// one token per non-ASCII character (CJK and similar scripts tokenize close to one per char).
pub fn estimate_tokens(ascii_chars: f64, non_ascii_chars: f64) -> f64 {
    ascii_chars / 4.0 + non_ascii_chars
}

/// The edges' counts accumulated over a conversation, each piece's scaled by its part's weight.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    classes: [f64; NUM_CLASSES],
    families: [f64; NUM_FAMILIES],
}

impl Totals {
    /// Adds `c` scaled by `weight`.
    pub(crate) fn add(&mut self, c: &PieceCounts, weight: f64) {
        for (t, v) in self.classes.iter_mut().zip(c.classes) {
            *t += weight * f64::from(v);
        }
        for (t, v) in self.families.iter_mut().zip(c.families) {
            *t += weight * f64::from(v);
        }
    }

    /// Whether some edge of the conversation asks for a transform of supplied material: the
    /// newest ask's, or (at any weight) an earlier turn's or a system prompt's.
    pub(crate) fn material_follows(&self) -> bool {
        self.family(Family::Transform) > 0.0
    }

    fn class(&self, c: Class) -> f64 {
        self.classes[c as usize]
    }

    fn family(&self, f: Family) -> f64 {
        self.families[f as usize]
    }
}

/// What is known about the request besides the weighted counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// Estimated tokens of the newest user turn's edges.
    pub ask_tokens: f64,
    /// Estimated tokens of everything else.
    pub context_tokens: f64,
    /// Code syntax matches, weighted by part.
    pub code: f64,
    pub turns: u32,
    pub images: u32,
    pub tools: u32,
    pub max_tokens: Option<u32>,
}

/// `ln(1 + x)` for counts, so that the tenth cue adds less than the first.
fn log_count(x: f64) -> f64 {
    x.max(0.0).ln_1p()
}

/// Output length a request asks for when it names none: the feature is 0 at this value.
const NEUTRAL_MAX_TOKENS: f64 = 1024.0;

/// Turns the weighted counts into the feature vector ([`Feature::ALL`] order), one line per
/// feature: straight-line code, which a `match` mapped over `Feature::ALL` was 10% slower than
/// on short prompts (`compute_writes_every_feature` checks that none is left out). `ask`
/// weighs regions by how much they say about what is asked (cues, quantities, notation);
/// `ctx.code` counts code syntax by how much a part says about the request being about code,
/// where pasted code counts.
pub(crate) fn compute(ask: &Totals, ctx: &Context) -> [f64; NUM_FEATURES] {
    let cue = |f: Family| log_count(ask.family(f));
    let mut v = [0.0; NUM_FEATURES];
    v[Feature::AskTokens as usize] = log_count(ctx.ask_tokens);
    v[Feature::ContextTokens as usize] = log_count(ctx.context_tokens);
    v[Feature::Code as usize] = log_count(ctx.code);
    v[Feature::Questions as usize] = log_count(ask.class(Class::Question) - 1.0);
    v[Feature::MultiPart as usize] = cue(Family::MultiPart);
    v[Feature::Constraints as usize] = cue(Family::Constraint);
    v[Feature::Proof as usize] = cue(Family::Proof);
    v[Feature::Reasoning as usize] = cue(Family::Reasoning);
    v[Feature::Analysis as usize] = cue(Family::Analysis);
    v[Feature::Design as usize] = cue(Family::Design);
    v[Feature::Diagnose as usize] = cue(Family::Diagnose);
    v[Feature::Build as usize] = cue(Family::Build);
    v[Feature::Tricky as usize] = cue(Family::Tricky);
    v[Feature::Transform as usize] = cue(Family::Transform);
    v[Feature::Chat as usize] = cue(Family::Chat);
    v[Feature::Lookup as usize] = cue(Family::Lookup);
    v[Feature::LongOutput as usize] = cue(Family::LongOutput);
    v[Feature::Turns as usize] = log_count(f64::from(ctx.turns.saturating_sub(1)));
    v[Feature::Images as usize] = log_count(f64::from(ctx.images));
    v[Feature::Tools as usize] = log_count(f64::from(ctx.tools));
    v[Feature::MaxTokens as usize] = ctx
        .max_tokens
        .map_or(0.0, |m| (f64::from(m.max(1)) / NEUTRAL_MAX_TOKENS).ln());
    v
}

/// Bytes at each end of a piece that count as where it states its ask.
pub(crate) const ASK_EDGE: usize = 400;

/// A paragraph shorter than this at either end of a long piece is not taken for its ask (a
/// trailing "Thanks" or a heading).
const MIN_ASK_PARAGRAPH: usize = 16;

/// The edges of a piece longer than `2 × ASK_EDGE`: `hay[..head]` and `hay[tail..]`, where a
/// request states what it wants ("Summarise these notes:\n\n…", "…\n\nWhat is wrong with
/// it?"). The head is the first paragraph, at most [`ASK_EDGE`] bytes: it stops at a blank
/// line or at a colon ending a line ("Translate this:"), so that the first lines of pasted
/// material do not count as the ask. The tail is the last paragraph if it stands apart (after
/// a blank line) or the last line if it is a question, at most [`ASK_EDGE`] bytes; otherwise
/// the piece ends inside its material and the tail is empty.
fn edges(hay: &[u8]) -> (usize, usize) {
    let n = hay.len();
    let head = memchr::memchr_iter(b'\n', &hay[MIN_ASK_PARAGRAPH..ASK_EDGE])
        .map(|p| MIN_ASK_PARAGRAPH + p)
        .find(|&p| hay[p - 1] == b':' || hay.get(p + 1) == Some(&b'\n'))
        .map_or(ASK_EDGE, |p| p + 1 + usize::from(hay[p - 1] != b':'));
    let from = n - ASK_EDGE;
    let end = hay.trim_ascii_end().len().max(from);
    let window = &hay[from..end];
    let paragraph = memchr::memrchr_iter(b'\n', window)
        .find(|&p| p > 0 && window[p - 1] == b'\n')
        .map(|p| p + 1);
    let question =
        (window.last() == Some(&b'?')).then(|| memchr::memrchr(b'\n', window).map_or(0, |p| p + 1));
    let tail = match paragraph.or(question) {
        Some(p) if window.len() - p >= MIN_ASK_PARAGRAPH => from + p,
        _ => n,
    };
    (head, tail)
}

/// Number of segments walked in lock-step.
const LANES: usize = 4;

/// Keyword families are counted in this many bytes at each end of a piece.
pub(crate) const KEYWORD_WINDOW: usize = 16 * 1024;

/// Below this many bytes per lane the piece is walked as one segment.
const MIN_LANE_BYTES: usize = 64;

/// The compiled keyword automaton and per-pattern info.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    dfa: DFA,
    info: Vec<PatternInfo>,
    /// Bytes a lane replays before its segment (longest pattern − 1).
    overlap: usize,
}

/// Errors building the automaton.
#[derive(Debug, thiserror::Error)]
#[error("building the keyword automaton: {0}")]
pub struct BuildError(#[from] aho_corasick::BuildError);

/// The state one lane carries through its segment.
#[derive(Clone, Copy)]
struct Lane {
    sid: aho_corasick::automaton::StateID,
    classes: [u32; NUM_CLASSES],
    /// Matches ending in the edges (0) and in the middle (1).
    families: [[u32; NUM_FAMILIES]; 2],
}

/// Where a piece's edges end and begin again: bytes before `head` and from `tail` on are edges.
#[derive(Clone, Copy)]
struct Cuts {
    head: usize,
    tail: usize,
}

impl Cuts {
    /// The region (0 edges, 1 middle) of a match ending just before `end`.
    fn region(self, end: usize) -> usize {
        usize::from(end > self.head && end <= self.tail)
    }
}

/// What one walk over a piece counts: byte classes of the whole piece, and
/// keyword matches by region.
#[derive(Default)]
struct Walk {
    classes: [u32; NUM_CLASSES],
    families: [[u32; NUM_FAMILIES]; 2],
}

impl Scanner {
    /// Builds the automaton over every family pattern.
    pub(crate) fn new() -> Result<Self, BuildError> {
        let (pats, info) = keywords::patterns();
        let dfa = DFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .start_kind(aho_corasick::StartKind::Unanchored)
            .build(&pats)?;
        let longest = pats.iter().map(|p| p.len()).max().unwrap_or(1);
        Ok(Self {
            dfa,
            info,
            overlap: longest.saturating_sub(1),
        })
    }

    fn start(&self) -> aho_corasick::automaton::StateID {
        // Unanchored start always exists for a DFA built with an unanchored start kind; the
        // fallback only keeps this total.
        self.dfa
            .start_state(Anchored::No)
            .unwrap_or(aho_corasick::automaton::StateID::ZERO)
    }

    /// State after feeding `bytes` to `sid`, ignoring matches.
    fn replay(
        &self,
        mut sid: aho_corasick::automaton::StateID,
        bytes: &[u8],
    ) -> aho_corasick::automaton::StateID {
        for &b in bytes {
            sid = self.dfa.next_state(Anchored::No, sid, b);
        }
        sid
    }

    /// A lane whose segment starts at `from`: the automaton has seen what precedes it (the
    /// virtual newline before the piece when that is within reach).
    fn lane_at(&self, hay: &[u8], from: usize) -> Lane {
        let back = from.saturating_sub(self.overlap);
        let mut sid = self.start();
        if back == 0 {
            sid = self.dfa.next_state(Anchored::No, sid, b'\n');
        }
        sid = self.replay(sid, &hay[back..from]);
        Lane {
            sid,
            classes: [0; NUM_CLASSES],
            families: [[0; NUM_FAMILIES]; 2],
        }
    }

    /// Records every pattern that ends just before `end` in state `sid`, if its word
    /// boundaries hold.
    #[cold]
    fn on_match(
        &self,
        hay: &[u8],
        end: usize,
        sid: aho_corasick::automaton::StateID,
        cuts: Cuts,
        fams: &mut [[u32; NUM_FAMILIES]; 2],
    ) {
        let fams = &mut fams[cuts.region(end)];
        if !self.dfa.is_match(sid) {
            return;
        }
        for i in 0..self.dfa.match_len(sid) {
            let pid = self.dfa.match_pattern(sid, i);
            let Some(info) = self.info.get(pid.as_usize()) else {
                continue;
            };
            let len = info.len as usize;
            // A start before 0 means the match began on the virtual newline.
            if info.word_start && end >= len {
                let start = end - len;
                if start > 0 && keywords::is_word_byte(hay[start - 1]) {
                    continue;
                }
            }
            if info.word_end && end < hay.len() && keywords::is_word_byte(hay[end]) {
                continue;
            }
            if info.prose
                && (hay.get(end) == Some(&b'(') || (end > len && hay[end - len - 1] == b'.'))
            {
                continue;
            }
            if let Some(f) = fams.get_mut(usize::from(info.family)) {
                *f += 1;
            }
        }
    }

    #[inline(always)]
    fn step(&self, lane: &mut Lane, hay: &[u8], pos: usize, b: u8, cuts: Cuts) {
        lane.classes[class_at(hay, pos)] += 1;
        lane.sid = self.dfa.next_state(Anchored::No, lane.sid, b);
        if self.dfa.is_special(lane.sid) {
            self.on_match(hay, pos + 1, lane.sid, cuts, &mut lane.families);
        }
    }

    /// Counts one piece of text, edges and middle apart. One walk covers the whole piece, as
    /// fast as a piece without regions: keyword matches are told apart by where they end, and
    /// the edges' byte classes are counted again by a plain pass over at most `2 × ASK_EDGE`
    /// bytes (the middle's are the rest).
    pub(crate) fn scan(&self, text: &str) -> Regions {
        let hay = text.as_bytes();
        let n = hay.len();
        let cuts = if n <= 2 * ASK_EDGE {
            Cuts { head: n, tail: n }
        } else {
            let (head, tail) = edges(hay);
            Cuts { head, tail }
        };
        let mut walk = Walk::default();
        if n <= 2 * KEYWORD_WINDOW {
            self.scan_keywords(hay, 0, n, cuts, &mut walk);
        } else {
            self.scan_keywords(hay, 0, KEYWORD_WINDOW, cuts, &mut walk);
            let mut plain = PieceCounts::default();
            scan_plain(hay, KEYWORD_WINDOW, n - KEYWORD_WINDOW, &mut plain);
            for (o, v) in walk.classes.iter_mut().zip(plain.classes) {
                *o += v;
            }
            self.scan_keywords(hay, n - KEYWORD_WINDOW, n, cuts, &mut walk);
        }
        let [edge_families, middle_families] = walk.families;
        let bytes = |b: usize| u32::try_from(b).unwrap_or(u32::MAX);
        let mut r = Regions::default();
        r.edges.families = edge_families;
        r.middle.families = middle_families;
        if cuts.head == n {
            r.edges.classes = walk.classes;
            r.edges.bytes = bytes(n);
            return r;
        }
        scan_plain(hay, 0, cuts.head, &mut r.edges);
        scan_plain(hay, cuts.tail, n, &mut r.edges);
        r.edges.bytes = bytes(cuts.head + n - cuts.tail);
        r.middle.bytes = bytes(cuts.tail - cuts.head);
        for ((m, w), e) in r
            .middle
            .classes
            .iter_mut()
            .zip(walk.classes)
            .zip(r.edges.classes)
        {
            *m = w.saturating_sub(e);
        }
        r
    }

    /// Counts `hay[from..to]` with the keyword automaton, in lanes when it is long enough.
    fn scan_keywords(&self, hay: &[u8], from: usize, to: usize, cuts: Cuts, out: &mut Walk) {
        let seg = (to - from) / LANES;
        if seg < MIN_LANE_BYTES.max(self.overlap) {
            let mut lane = self.lane_at(hay, from);
            for (i, &b) in hay[from..to].iter().enumerate() {
                self.step(&mut lane, hay, from + i, b, cuts);
            }
            merge(out, &lane);
            return;
        }
        let mut lanes: [Lane; LANES] = std::array::from_fn(|k| self.lane_at(hay, from + k * seg));
        for i in from..from + seg {
            for (k, lane) in lanes.iter_mut().enumerate() {
                let pos = k * seg + i;
                self.step(lane, hay, pos, hay[pos], cuts);
            }
        }
        let rest = from + LANES * seg;
        for (i, &b) in hay[rest..to].iter().enumerate() {
            self.step(&mut lanes[LANES - 1], hay, rest + i, b, cuts);
        }
        for lane in &lanes {
            merge(out, lane);
        }
    }
}

/// Counts byte classes of `hay[from..to]` (no keywords). Four interleaved
/// class tables so that runs of same-class bytes do not serialise on one counter.
fn scan_plain(hay: &[u8], from: usize, to: usize, out: &mut PieceCounts) {
    let mut classes = [[0u32; NUM_CLASSES]; 4];
    let quads = (to - from) / 4;
    for q in 0..quads {
        let at = from + 4 * q;
        let [t0, t1, t2, t3] = &mut classes;
        t0[class_at(hay, at)] += 1;
        t1[class_at(hay, at + 1)] += 1;
        t2[class_at(hay, at + 2)] += 1;
        t3[class_at(hay, at + 3)] += 1;
    }
    for pos in from + 4 * quads..to {
        classes[0][class_at(hay, pos)] += 1;
    }
    for table in &classes {
        for (o, v) in out.classes.iter_mut().zip(table) {
            *o += v;
        }
    }
}

/// The class of `hay[pos]`. A `?` asks a question only right after a word, a closing bracket
/// or a quote: the `??` of a fill-in placeholder (`assert f(x) == ??`) or a lone ` ? ` asks
/// nothing.
#[inline(always)]
fn class_at(hay: &[u8], pos: usize) -> usize {
    let c = CLASS[usize::from(hay[pos])];
    if c == Class::Question as u8 && !(pos > 0 && ends_phrase(hay[pos - 1])) {
        return Class::Other as usize;
    }
    usize::from(c)
}

/// Bytes a question's `?` follows.
fn ends_phrase(b: u8) -> bool {
    keywords::is_word_byte(b) || matches!(b, b')' | b']' | b'"' | b'\'' | b'`' | b'*')
}

fn merge(out: &mut Walk, lane: &Lane) {
    for (o, v) in out.classes.iter_mut().zip(lane.classes) {
        *o += v;
    }
    for (out, lane) in out.families.iter_mut().zip(&lane.families) {
        for (o, v) in out.iter_mut().zip(lane) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_writes_every_feature() {
        let ask = Totals {
            classes: [3.0; NUM_CLASSES],
            families: [2.0; NUM_FAMILIES],
        };
        let ctx = Context {
            ask_tokens: 5.0,
            context_tokens: 7.0,
            code: 1.0,
            turns: 3,
            images: 1,
            tools: 2,
            max_tokens: Some(4096),
        };
        let v = compute(&ask, &ctx);
        for f in Feature::ALL {
            assert!(v[f.index()] > 0.0, "{f} is not written");
        }
    }

    fn fam(text: &str, f: Family) -> u32 {
        let s = Scanner::new().unwrap();
        let r = s.scan(text);
        r.edges.families[f as usize] + r.middle.families[f as usize]
    }

    #[test]
    fn names_are_unique_and_all_is_in_index_order() {
        let mut v: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), NUM_FEATURES);
        for (i, f) in Feature::ALL.into_iter().enumerate() {
            assert_eq!(f.index(), i, "{f}");
            assert_eq!(Feature::from_name(f.name()), Some(f));
            assert!(!f.description().is_empty(), "{f}");
        }
        assert_eq!(Feature::from_name("subject_is_law"), None);
    }

    #[test]
    fn whole_words_and_stems() {
        assert_eq!(fam("Prove it. PROVE it", Family::Proof), 2);
        assert_eq!(fam("improve", Family::Proof), 0);
        assert_eq!(fam("Analysis and ANALYSE", Family::Analysis), 2);
        assert_eq!(fam("Summarise this; a summary", Family::Transform), 2);
    }

    #[test]
    fn prose_cues_do_not_count_inside_code() {
        assert_eq!(fam("Summarize the notes.", Family::Transform), 1);
        assert_eq!(fam("s = summary(text)", Family::Transform), 0);
        assert_eq!(fam("x.validate", Family::Analysis), 0);
        assert_eq!(fam("cfg.design", Family::Design), 0);
        assert_eq!(fam("n = len(xs)", Family::CodeSyntax), 1);
    }

    #[test]
    fn english_words_are_not_code() {
        let prose = "While we wait for the new class to return, if nothing breaks, we import \
                     coffee and do not throw anything away; for now, true or false, none of it \
                     matters.";
        assert_eq!(fam(prose, Family::CodeSyntax), 0);
        let code = "def f(xs):\n    if x == 1:\n        return len(xs)\n";
        assert!(fam(code, Family::CodeSyntax) >= 3);
    }

    #[test]
    fn line_starts_include_the_first_line() {
        assert_eq!(fam("1. a\n2. b\n3. c", Family::MultiPart), 3);
    }

    #[test]
    fn lanes_count_the_same_as_one_pass() {
        let s = Scanner::new().unwrap();
        let unit =
            "Why is x == 3? Prove it step by step.\n1. def f(x): return x\n  naïve 東京 (a) ";
        for reps in [1, 3, 7, 20, 61] {
            let text = unit.repeat(reps);
            let cuts = Cuts {
                head: text.len() / 3,
                tail: 2 * text.len() / 3,
            };
            let mut whole = Walk::default();
            s.scan_keywords(text.as_bytes(), 0, text.len(), cuts, &mut whole);
            let mut lane = s.lane_at(text.as_bytes(), 0);
            for (pos, &b) in text.as_bytes().iter().enumerate() {
                s.step(&mut lane, text.as_bytes(), pos, b, cuts);
            }
            assert_eq!(whole.families, lane.families, "reps {reps}");
            assert_eq!(whole.classes, lane.classes, "reps {reps}");
        }
    }

    #[test]
    fn edges_hold_the_ask_and_the_middle_the_material() {
        let s = Scanner::new().unwrap();
        let notes = "We compared the designs and analysed the trade-offs. ".repeat(40);
        let text = format!(
            "Summarize these notes in three bullet points:\n{notes}\n\nThanks, that helps a lot!"
        );
        let r = s.scan(&text);
        assert_eq!(r.edges.families[Family::Transform as usize], 2);
        assert_eq!(r.edges.families[Family::Chat as usize], 1);
        assert!(r.middle.families[Family::Analysis as usize] > 20);
        // The head stops at the colon that ends the ask's line; the tail is the last paragraph.
        let ask = "Summarize these notes in three bullet points:\n".len()
            + "Thanks, that helps a lot!".len();
        assert_eq!(r.edges.bytes as usize, ask);
        assert_eq!(
            (r.edges.bytes + r.middle.bytes) as usize,
            text.len(),
            "every byte is in one region"
        );
        let total: u32 = r.edges.classes.iter().chain(&r.middle.classes).sum();
        assert_eq!(total as usize, text.len());
    }

    #[test]
    fn long_pieces_count_keywords_at_the_ends_of_the_middle_only() {
        let s = Scanner::new().unwrap();
        let filler = "lorem ipsum dolor 12 ".repeat(2 * KEYWORD_WINDOW / 20);
        let text = format!("prove {filler} prove {filler}\n\nSo, can you prove this?");
        let r = s.scan(&text);
        assert_eq!(r.edges.families[Family::Proof as usize], 2);
        assert_eq!(r.middle.families[Family::Proof as usize], 0);
        // Classes still cover every byte.
        let total: u32 = r.edges.classes.iter().chain(&r.middle.classes).sum();
        assert_eq!(total as usize, text.len());
        // A long piece that ends inside its material has no tail edge.
        let open = format!("prove {filler} prove {filler} prove");
        let r = s.scan(&open);
        assert_eq!(r.edges.families[Family::Proof as usize], 1);
    }

    #[test]
    fn placeholders_ask_no_question() {
        let s = Scanner::new().unwrap();
        let q = |t: &str| s.scan(t).edges.classes[Class::Question as usize];
        assert_eq!(q("assert f([1, 2]) == ??"), 0);
        assert_eq!(q("Why? (Really?) \"Sure?\" é?"), 4);
        assert_eq!(q("? a ? b"), 0);
    }

    #[test]
    fn counts_chars() {
        let s = Scanner::new().unwrap();
        let c = s.scan("ab 12 cd3 é ≤").edges;
        assert_eq!(c.classes[Class::Utf8Lead as usize], 1);
        assert_eq!(c.classes[Class::Utf8Symbol as usize], 1);
        assert_eq!(c.classes[Class::Utf8Cont as usize], 3);
        assert!((c.tokens() - (11.0 / 4.0 + 2.0)).abs() < 1e-12);
    }
}
