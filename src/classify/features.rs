//! Feature extraction: one pass over each text piece, counting byte classes, word and number
//! runs, and keyword-family matches, then turning the weighted counts into feature values.
//!
//! Speed: the pass splits a piece into four equal segments and walks them in lock-step, so the
//! four Aho-Corasick DFA walks (each a chain of dependent table loads) overlap in the CPU instead
//! of running one after another. Each segment after the first replays the last
//! `longest pattern − 1` bytes of the segment before it without counting, so a match that spans a
//! segment border is counted exactly once, by the segment it ends in.
//!
//! Keyword families are counted in the first and last [`KEYWORD_WINDOW`] bytes of each piece
//! only; byte classes and word/number runs cover every byte. The keyword automaton is large
//! (hundreds of case-insensitive patterns, ~700 KB as a DFA, so its walk runs at L2 speed),
//! and what a long piece asks for sits at its start and end: its middle is pasted material,
//! whose vocabulary says what the document is about rather than what is asked. Every labelled
//! training prompt is far shorter than two windows, so this changes nothing the weights saw.

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind};

use super::keywords::{self, Family, NUM_FAMILIES, PatternInfo};

/// Byte classes counted per piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Class {
    Other,
    Lower,
    Upper,
    Newline,
    Question,
    Brace,
    Paren,
    Bracket,
    Semicolon,
    Equals,
    MathOp,
    Backslash,
    Dollar,
    Quote,
    Comma,
    Underscore,
    Utf8Lead,
    Utf8Symbol,
    Utf8Cont,
}

/// Number of byte classes.
const NUM_CLASSES: usize = 19;

/// Byte → class.
static CLASS: [u8; 256] = {
    let mut t = [Class::Other as u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' => Class::Lower,
            b'A'..=b'Z' => Class::Upper,
            b'\n' => Class::Newline,
            b'?' => Class::Question,
            b'{' | b'}' => Class::Brace,
            b'(' | b')' => Class::Paren,
            b'[' | b']' => Class::Bracket,
            b';' => Class::Semicolon,
            b'=' => Class::Equals,
            b'+' | b'*' | b'/' | b'^' | b'<' | b'>' | b'%' => Class::MathOp,
            b'\\' => Class::Backslash,
            b'$' => Class::Dollar,
            b'"' | b'\'' | b'`' => Class::Quote,
            b',' => Class::Comma,
            b'_' => Class::Underscore,
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

/// Byte → class in bits 0–4, run kind in bits 5–6: bit 5 word (ASCII letter or any non-ASCII
/// byte, so non-Latin words count as words), bit 6 digit. A run starts where a kind bit turns
/// on. One table so the hot loop does one lookup per byte.
static BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let kind = if c.is_ascii_alphabetic() || c >= 0x80 {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            0
        };
        t[b] = CLASS[b] | (kind << 5);
        b += 1;
    }
    t
};

/// Names of the features, in vector order. The weights file names them the same way.
pub const FEATURE_NAMES: [&str; NUM_FEATURES] = [
    "tokens",
    "lines",
    "avg_word_len",
    "sentence_len",
    "numbers",
    "math_ops",
    "math_words",
    "latex",
    "code_syntax",
    "code_keywords",
    "code_fences",
    "indentation",
    "questions",
    "enumerations",
    "multipart",
    "quotes",
    "commas",
    "reasoning",
    "analysis",
    "constraints",
    "negation",
    "simple_task",
    "long_output",
    "non_ascii_share",
    "symbols",
    "system_tokens",
    "turns",
    "images",
    "tools",
    "max_tokens",
];

/// Number of features.
pub const NUM_FEATURES: usize = 30;

/// Raw counts for one text piece.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PieceCounts {
    classes: [u32; NUM_CLASSES],
    families: [u32; NUM_FAMILIES],
    words: u32,
    numbers: u32,
    bytes: u32,
}

impl PieceCounts {
    /// Estimated tokens of this piece (see [`estimate_tokens`]).
    pub(crate) fn tokens(&self) -> f64 {
        let lead = f64::from(
            self.classes[Class::Utf8Lead as usize] + self.classes[Class::Utf8Symbol as usize],
        );
        let cont = f64::from(self.classes[Class::Utf8Cont as usize]);
        estimate_tokens(f64::from(self.bytes) - lead - cont, lead)
    }
}

/// Token estimate used everywhere (features, cost): about four ASCII characters per token, and
/// one token per non-ASCII character (CJK and similar scripts tokenize close to one per char).
pub fn estimate_tokens(ascii_chars: f64, non_ascii_chars: f64) -> f64 {
    ascii_chars / 4.0 + non_ascii_chars
}

/// Counts accumulated over a conversation, each piece scaled by its part weight.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    classes: [f64; NUM_CLASSES],
    families: [f64; NUM_FAMILIES],
    words: f64,
    numbers: f64,
    bytes: f64,
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
        self.words += weight * f64::from(c.words);
        self.numbers += weight * f64::from(c.numbers);
        self.bytes += weight * f64::from(c.bytes);
    }

    fn class(&self, c: Class) -> f64 {
        self.classes[c as usize]
    }

    fn family(&self, f: Family) -> f64 {
        self.families[f as usize]
    }
}

/// What is known about the request besides its text, plus the unweighted sizes the
/// accumulator tracked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub system_tokens: f64,
    pub turns: u32,
    pub images: u32,
    pub tools: u32,
    pub max_tokens: Option<u32>,
}

/// `ln(1 + x)` for counts, so that the tenth code keyword adds less than the first.
fn log_count(x: f64) -> f64 {
    x.max(0.0).ln_1p()
}

fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// Average word length is taken over the text's words plus this many words of
/// [`PRIOR_WORD_LEN`] letters: the ratio over two or three words is noise, and a greeting
/// should not read as an extreme of vocabulary.
const PRIOR_WORDS: f64 = 5.0;

/// Letters in a typical English word (the training prompts average 4.6).
const PRIOR_WORD_LEN: f64 = 4.7;

/// Output length a request asks for when it names none: the feature is 0 at this value.
const NEUTRAL_MAX_TOKENS: f64 = 1024.0;

/// Turns the weighted counts into the feature vector (order of [`FEATURE_NAMES`]).
pub(crate) fn compute(t: &Totals, ctx: &Context) -> [f64; NUM_FEATURES] {
    let lead = t.class(Class::Utf8Lead) + t.class(Class::Utf8Symbol);
    let cont = t.class(Class::Utf8Cont);
    let chars = t.bytes - cont;
    let ascii = chars - lead;
    let letters = t.class(Class::Lower) + t.class(Class::Upper);
    let syntax = t.class(Class::Brace)
        + t.class(Class::Paren)
        + t.class(Class::Bracket)
        + t.class(Class::Semicolon)
        + t.class(Class::Equals)
        + t.class(Class::Underscore);
    let max_tokens = ctx
        .max_tokens
        .map_or(0.0, |m| (f64::from(m.max(1)) / NEUTRAL_MAX_TOKENS).ln());
    [
        log_count(estimate_tokens(ascii, lead)),
        log_count(t.class(Class::Newline)),
        // Letters of any script: a word of accented or non-Latin letters is as long as it looks.
        // The prior words keep a one-word prompt from looking extreme.
        ((letters + t.class(Class::Utf8Lead) + PRIOR_WORDS * PRIOR_WORD_LEN)
            / (t.words + PRIOR_WORDS))
            .min(20.0),
        log_count(t.words / (1.0 + t.family(Family::SentenceEnd))),
        log_count(t.numbers),
        log_count(t.class(Class::MathOp) + t.class(Class::Equals)),
        log_count(t.family(Family::MathWord)),
        log_count(t.class(Class::Backslash) + t.class(Class::Dollar)),
        share(syntax, chars),
        log_count(t.family(Family::CodeKeyword)),
        log_count(t.family(Family::CodeFence)),
        log_count(t.family(Family::Indentation)),
        log_count(t.class(Class::Question)),
        log_count(t.family(Family::Enumeration)),
        log_count(t.family(Family::MultiPart)),
        log_count(t.class(Class::Quote)),
        log_count(t.class(Class::Comma)),
        log_count(t.family(Family::Reasoning)),
        log_count(t.family(Family::Analysis)),
        log_count(t.family(Family::Constraint)),
        log_count(t.family(Family::Negation)),
        log_count(t.family(Family::SimpleTask)),
        log_count(t.family(Family::LongOutput)),
        share(t.class(Class::Utf8Lead), chars),
        log_count(t.class(Class::Utf8Symbol)),
        log_count(ctx.system_tokens),
        log_count(f64::from(ctx.turns.saturating_sub(1))),
        log_count(f64::from(ctx.images)),
        log_count(f64::from(ctx.tools)),
        max_tokens,
    ]
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
    prev_kind: u8,
    classes: [u32; NUM_CLASSES],
    families: [u32; NUM_FAMILIES],
    words: u32,
    numbers: u32,
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
        let prev_kind = if from == 0 {
            0
        } else {
            BYTE[usize::from(hay[from - 1])] >> 5
        };
        Lane {
            sid,
            prev_kind,
            classes: [0; NUM_CLASSES],
            families: [0; NUM_FAMILIES],
            words: 0,
            numbers: 0,
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
        fams: &mut [u32; NUM_FAMILIES],
    ) {
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
    fn step(&self, lane: &mut Lane, hay: &[u8], pos: usize, b: u8) {
        let t = BYTE[usize::from(b)];
        lane.classes[usize::from(t & 31)] += 1;
        let kind = t >> 5;
        let starts = kind & !lane.prev_kind;
        lane.words += u32::from(starts & 1);
        lane.numbers += u32::from(starts >> 1);
        lane.prev_kind = kind;
        lane.sid = self.dfa.next_state(Anchored::No, lane.sid, b);
        if self.dfa.is_special(lane.sid) {
            self.on_match(hay, pos + 1, lane.sid, &mut lane.families);
        }
    }

    /// Counts one piece of text.
    pub(crate) fn scan(&self, text: &str) -> PieceCounts {
        let hay = text.as_bytes();
        let n = hay.len();
        let mut out = PieceCounts {
            bytes: u32::try_from(n).unwrap_or(u32::MAX),
            ..PieceCounts::default()
        };
        if n <= 2 * KEYWORD_WINDOW {
            self.scan_keywords(hay, 0, n, &mut out);
        } else {
            self.scan_keywords(hay, 0, KEYWORD_WINDOW, &mut out);
            scan_plain(hay, KEYWORD_WINDOW, n - KEYWORD_WINDOW, &mut out);
            self.scan_keywords(hay, n - KEYWORD_WINDOW, n, &mut out);
        }
        out
    }

    /// Counts `hay[from..to]` with the keyword automaton, in lanes when it is long enough.
    fn scan_keywords(&self, hay: &[u8], from: usize, to: usize, out: &mut PieceCounts) {
        let seg = (to - from) / LANES;
        if seg < MIN_LANE_BYTES.max(self.overlap) {
            let mut lane = self.lane_at(hay, from);
            for (i, &b) in hay[from..to].iter().enumerate() {
                self.step(&mut lane, hay, from + i, b);
            }
            merge(out, &lane);
            return;
        }
        let mut lanes: [Lane; LANES] = std::array::from_fn(|k| self.lane_at(hay, from + k * seg));
        for i in from..from + seg {
            for (k, lane) in lanes.iter_mut().enumerate() {
                let pos = k * seg + i;
                self.step(lane, hay, pos, hay[pos]);
            }
        }
        let rest = from + LANES * seg;
        for (i, &b) in hay[rest..to].iter().enumerate() {
            self.step(&mut lanes[LANES - 1], hay, rest + i, b);
        }
        for lane in &lanes {
            merge(out, lane);
        }
    }
}

/// Counts byte classes and word/number runs of `hay[from..to]` (no keywords). Four interleaved
/// class tables so that runs of same-class bytes do not serialise on one counter.
fn scan_plain(hay: &[u8], from: usize, to: usize, out: &mut PieceCounts) {
    let mut classes = [[0u32; NUM_CLASSES]; 4];
    let mut prev = if from == 0 {
        0
    } else {
        BYTE[usize::from(hay[from - 1])] >> 5
    };
    let (mut words, mut numbers) = (0u32, 0u32);
    let mut count = |table: &mut [u32; NUM_CLASSES], b: u8| {
        let t = BYTE[usize::from(b)];
        table[usize::from(t & 31)] += 1;
        let kind = t >> 5;
        let starts = kind & !prev;
        words += u32::from(starts & 1);
        numbers += u32::from(starts >> 1);
        prev = kind;
    };
    let chunks = hay[from..to].chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let [t0, t1, t2, t3] = &mut classes;
        count(t0, c[0]);
        count(t1, c[1]);
        count(t2, c[2]);
        count(t3, c[3]);
    }
    for &b in rest {
        count(&mut classes[0], b);
    }
    for table in &classes {
        for (o, v) in out.classes.iter_mut().zip(table) {
            *o += v;
        }
    }
    out.words += words;
    out.numbers += numbers;
}

fn merge(out: &mut PieceCounts, lane: &Lane) {
    for (o, v) in out.classes.iter_mut().zip(lane.classes) {
        *o += v;
    }
    for (o, v) in out.families.iter_mut().zip(lane.families) {
        *o += v;
    }
    out.words += lane.words;
    out.numbers += lane.numbers;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fam(text: &str, f: Family) -> u32 {
        let s = Scanner::new().unwrap();
        s.scan(text).families[f as usize]
    }

    #[test]
    fn names_are_unique() {
        let mut v = FEATURE_NAMES.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), NUM_FEATURES);
    }

    #[test]
    fn whole_words_and_stems() {
        assert_eq!(fam("Why? why not", Family::Reasoning), 2);
        assert_eq!(fam("whyever", Family::Reasoning), 0);
        assert_eq!(fam("Analysis and ANALYSE", Family::Analysis), 2);
        assert_eq!(fam("nothing", Family::Negation), 0);
        assert_eq!(fam("do not", Family::Negation), 1);
    }

    #[test]
    fn prose_cues_do_not_count_inside_code() {
        assert_eq!(fam("List three colors.", Family::SimpleTask), 1);
        assert_eq!(fam("chars = list(text)", Family::SimpleTask), 0);
        assert_eq!(fam("list(text)", Family::SimpleTask), 0);
        assert_eq!(fam("Use the format below.", Family::Constraint), 1);
        assert_eq!(fam("'{}'.format(x)", Family::Constraint), 0);
        assert_eq!(fam("x.validate", Family::Analysis), 0);
        // Maths and code families keep their calls: sqrt(2) is maths, len( is code.
        assert_eq!(fam("sqrt(2)", Family::MathWord), 1);
        assert_eq!(fam("n = len(xs)", Family::CodeKeyword), 1);
    }

    #[test]
    fn line_starts_include_the_first_line() {
        assert_eq!(fam("1. a\n2. b\n- c", Family::Enumeration), 3);
        assert_eq!(fam("x\n    y\n\tz", Family::Indentation), 2);
    }

    #[test]
    fn lanes_count_the_same_as_one_pass() {
        let s = Scanner::new().unwrap();
        let unit =
            "Why is x == 3? Prove it step by step.\n1. def f(x): return x\n  naïve 東京 (a) ";
        for reps in [1, 3, 7, 20, 61] {
            let text = unit.repeat(reps);
            let whole = s.scan(&text);
            let mut lane = s.lane_at(text.as_bytes(), 0);
            for (pos, &b) in text.as_bytes().iter().enumerate() {
                s.step(&mut lane, text.as_bytes(), pos, b);
            }
            assert_eq!(whole.families, lane.families, "reps {reps}");
            assert_eq!(whole.classes, lane.classes, "reps {reps}");
            assert_eq!(whole.words, lane.words, "reps {reps}");
            assert_eq!(whole.numbers, lane.numbers, "reps {reps}");
        }
    }

    #[test]
    fn long_pieces_count_keywords_at_the_ends_only() {
        let s = Scanner::new().unwrap();
        let filler = "lorem ipsum dolor 12 ".repeat(2 * KEYWORD_WINDOW / 20);
        let text = format!("why {filler} why {filler} why");
        let c = s.scan(&text);
        assert_eq!(c.families[Family::Reasoning as usize], 2);
        // Classes and runs still cover every byte.
        let n = text.len();
        assert_eq!(c.classes.iter().sum::<u32>() as usize, n);
        let words = text
            .split(|ch: char| !ch.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .count();
        assert_eq!(c.words as usize, words);
    }

    #[test]
    fn counts_words_numbers_and_chars() {
        let s = Scanner::new().unwrap();
        let c = s.scan("ab 12 cd3 é ≤");
        assert_eq!(c.words, 4);
        assert_eq!(c.numbers, 2);
        assert_eq!(c.classes[Class::Utf8Lead as usize], 1);
        assert_eq!(c.classes[Class::Utf8Symbol as usize], 1);
        assert_eq!(c.classes[Class::Utf8Cont as usize], 3);
        assert!((c.tokens() - (11.0 / 4.0 + 2.0)).abs() < 1e-12);
    }
}
