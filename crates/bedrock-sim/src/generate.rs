//! Deterministic answers: the simulator's tokenizer, prompt hashing and text/tool-use generation.
//!
//! Tokenizer rule (documented in `mod.rs`): a token is a run of 1–4 ASCII letters/digits (longer
//! runs are cut every 4 characters) or any other single non-whitespace character; whitespace is
//! never a token. The rule is prefix-stable, so cutting an answer after N token spans leaves text
//! that counts as exactly N tokens, which keeps `usage` consistent with what was sent.

use serde_json::{Map, Value};

use super::request::{ContentBlock, ConverseRequest, ImageBlock, ToolResultContent, ToolSpec};
use super::world;
use base64::Engine as _;

/// Why generation ended, as Bedrock's `stopReason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
}

impl StopReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::EndTurn => "end_turn",
            Self::MaxTokens => "max_tokens",
            Self::StopSequence => "stop_sequence",
            Self::ToolUse => "tool_use",
        }
    }
}

/// One output content block; `spans` are the token spans the stream sends one delta each.
#[derive(Debug, Clone)]
pub(crate) enum OutBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
        input_json: String,
    },
}

impl OutBlock {
    /// The strings a ConverseStream sends as deltas for this block, one per output token.
    pub(crate) fn delta_spans(&self) -> Vec<&str> {
        match self {
            Self::Text { text } => token_spans(text),
            Self::ToolUse { input_json, .. } => token_spans(input_json),
        }
    }

    fn tokens(&self) -> u32 {
        match self {
            Self::Text { text } => count_tokens(text),
            Self::ToolUse { input_json, .. } => count_tokens(input_json),
        }
    }
}

/// The complete answer to one request, fixed before any byte is sent.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub blocks: Vec<OutBlock>,
    pub stop_reason: StopReason,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// What the model "sees", reduced to the numbers generation depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PromptDigest {
    /// FNV-1a over every string the model sees, in request order.
    pub hash: u64,
    pub input_tokens: u32,
}

/// Inputs to [`answer`] besides the request itself.
pub(crate) struct AnswerParams<'a> {
    pub model_id: &'a str,
    pub max_tokens: u32,
    pub body_tokens_override: Option<u32>,
    /// The grade a text answer carries (see `world`).
    pub right: bool,
    /// In judge mode, the reply body that replaces the answer (and any tool call).
    pub judge_reply: Option<String>,
}

const VOCAB: &[&str] = &[
    "the", "a", "of", "to", "in", "on", "for", "with", "and", "but", "or", "so", "it", "is", "are",
    "was", "be", "can", "will", "may", "must", "this", "that", "each", "some", "many", "more",
    "most", "data", "code", "plan", "step", "fact", "idea", "test", "case", "rule", "note", "cost",
    "time", "area", "part", "unit", "set", "sum", "rate", "risk", "path", "node", "edge", "key",
    "map", "list", "tree", "load", "call", "user", "page", "file", "text", "word", "line", "form",
    "view", "next", "last", "also", "then", "when", "here", "just", "only", "very", "well", "fast",
    "slow", "good", "high", "low", "new", "old", "real", "true", "main", "full", "open", "safe",
    "sure", "easy", "hard", "long", "wide", "deep",
];

/// Byte spans of `s`, each holding any leading whitespace plus exactly one token; trailing
/// whitespace joins the last span so the spans always concatenate back to `s`.
pub(crate) fn token_spans(s: &str) -> Vec<&str> {
    let mut ends = Vec::new();
    scan_tokens(s, |end| ends.push(end));
    let mut spans = Vec::with_capacity(ends.len());
    let mut start = 0;
    let last = ends.len().saturating_sub(1);
    for (i, end) in ends.into_iter().enumerate() {
        let end = if i == last { s.len() } else { end };
        spans.push(&s[start..end]);
        start = end;
    }
    spans
}

/// Number of tokens in `s` under the simulator's tokenizer rule (see the module docs).
pub fn count_tokens(s: &str) -> u32 {
    let mut n = 0u32;
    scan_tokens(s, |_| n = n.saturating_add(1));
    n
}

fn scan_tokens(s: &str, mut on_token_end: impl FnMut(usize)) {
    let mut chars = s.char_indices().peekable();
    while let Some((idx, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut end = idx + c.len_utf8();
        if c.is_ascii_alphanumeric() {
            let mut run = 1;
            while run < 4 {
                match chars.peek() {
                    Some(&(i, next)) if next.is_ascii_alphanumeric() => {
                        end = i + 1;
                        run += 1;
                        chars.next();
                    }
                    _ => break,
                }
            }
        }
        on_token_end(end);
    }
}

/// FNV-1a, chosen because its output is fixed forever (std's hasher may change between releases).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator so that ("ab","c") and ("a","bc") hash differently.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// Tokens charged for an image: one per 750 decoded bytes, at least 1, at most 1600.
pub(crate) fn image_tokens(image: &ImageBlock) -> u32 {
    let len = image.source.bytes.as_deref().map_or(0, |b| {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_or(0, |v| v.len())
    });
    u32::try_from(len.div_ceil(750))
        .unwrap_or(u32::MAX)
        .clamp(1, 1600)
}

/// Counts input tokens over everything the model sees and hashes the same strings.
pub(crate) fn digest(req: &ConverseRequest) -> PromptDigest {
    let mut acc = Digester {
        hash: Fnv::new(),
        tokens: 0,
    };
    for block in &req.system {
        if let Some(text) = &block.text {
            acc.text(text);
        }
    }
    for message in req.messages.iter().flatten() {
        acc.text(&message.role);
        for block in &message.content {
            acc.block(block);
        }
    }
    if let Some(tools) = &req.tool_config {
        for spec in tools.tools.iter().filter_map(|t| t.tool_spec.as_ref()) {
            acc.text(&spec.name);
            if let Some(d) = &spec.description {
                acc.text(d);
            }
            if let Some(schema) = &spec.input_schema.json {
                acc.json(schema);
            }
        }
    }
    PromptDigest {
        hash: acc.hash.finish(),
        input_tokens: acc.tokens,
    }
}

struct Digester {
    hash: Fnv,
    tokens: u32,
}

impl Digester {
    fn text(&mut self, s: &str) {
        self.hash.write(s.as_bytes());
        self.tokens = self.tokens.saturating_add(count_tokens(s));
    }

    fn json(&mut self, v: &Value) {
        self.text(&v.to_string());
    }

    fn image(&mut self, image: &ImageBlock) {
        self.hash.write(image.format.as_bytes());
        self.hash
            .write(image.source.bytes.as_deref().unwrap_or("").as_bytes());
        self.tokens = self.tokens.saturating_add(image_tokens(image));
    }

    fn block(&mut self, block: &ContentBlock) {
        if let Some(text) = &block.text {
            self.text(text);
        }
        if let Some(image) = &block.image {
            self.image(image);
        }
        if let Some(tu) = &block.tool_use {
            self.text(&tu.name);
            self.json(&tu.input);
        }
        if let Some(tr) = &block.tool_result {
            for c in &tr.content {
                self.tool_result(c);
            }
        }
        for (key, value) in &block.other {
            self.text(key);
            self.json(value);
        }
    }

    fn tool_result(&mut self, c: &ToolResultContent) {
        if let Some(text) = &c.text {
            self.text(text);
        }
        if let Some(json) = &c.json {
            self.json(json);
        }
        if let Some(image) = &c.image {
            self.image(image);
        }
    }
}

/// Body length (tokens after the `[model]` header) a prompt naturally gets: 20–600 from the
/// hash, plus one token per 8 input tokens (capped) so longer prompts get longer answers.
pub(crate) fn natural_body_tokens(d: PromptDigest) -> u32 {
    let base = 20 + u32::try_from(d.hash % 581).unwrap_or(0);
    base + d.input_tokens.min(16_000) / 8
}

/// The full natural answer: `[MODEL_ID]`, then `body_tokens` tokens: the grade sentence
/// (`world::RIGHT_MARK` or `WRONG_MARK`) and sentences of vocabulary words.
pub(crate) fn natural_text(model_id: &str, right: bool, seed: u64, body_tokens: u32) -> String {
    let mark = if right {
        world::RIGHT_MARK
    } else {
        world::WRONG_MARK
    };
    let header = format!("[{model_id}]");
    let graded = format!("{header} {mark}");
    let mark_spans = token_spans(&graded);
    let header_tokens = count_tokens(&header) as usize;
    let body = usize::try_from(body_tokens).unwrap_or(usize::MAX);
    if header_tokens + body <= mark_spans.len() {
        return mark_spans[..header_tokens + body].concat();
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut text = graded;
    let mut count = count_tokens(mark);
    while count < body_tokens {
        let words = 5 + rng.u32(..8);
        for w in 0..words {
            let word = rng.choice(VOCAB).copied().unwrap_or_default();
            text.push(' ');
            if w == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    text.push(first.to_ascii_uppercase());
                    text.push_str(chars.as_str());
                }
            } else {
                text.push_str(word);
            }
            count += 1;
            if count == body_tokens {
                return text;
            }
        }
        text.push('.');
        count += 1;
    }
    text
}

/// Applies stop sequences then `max_tokens` to a natural answer.
pub(crate) fn shape_text(
    natural: &str,
    stop_sequences: &[String],
    max_tokens: u32,
) -> (String, StopReason) {
    let hit = stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| natural.find(s.as_str()))
        .min();
    let candidate = hit.map_or(natural, |i| &natural[..i]);
    let spans = token_spans(candidate);
    let max = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    if spans.len() > max {
        (spans[..max].concat(), StopReason::MaxTokens)
    } else if hit.is_some() {
        (candidate.to_owned(), StopReason::StopSequence)
    } else {
        (candidate.to_owned(), StopReason::EndTurn)
    }
}

/// How the model was asked to use tools, after validation.
pub(crate) enum ToolMode<'a> {
    /// Answer with text (no tools, or `auto` with no tool named in the last user turn).
    None,
    /// `auto` and the last user turn names this tool: a short text block, then the tool call.
    Auto(&'a ToolSpec),
    /// `any` or `tool`: the tool call alone, as Claude does when forced.
    Forced(&'a ToolSpec),
}

/// Builds the whole answer for a validated request.
pub(crate) fn answer(
    req: &ConverseRequest,
    d: PromptDigest,
    p: &AnswerParams<'_>,
    tools: &ToolMode<'_>,
) -> Answer {
    let stops = req
        .inference_config
        .as_ref()
        .and_then(|c| c.stop_sequences.clone())
        .unwrap_or_default();
    if let Some(reply) = &p.judge_reply {
        let (text, stop) = shape_text(&format!("[{}] {reply}", p.model_id), &stops, p.max_tokens);
        return finish(vec![OutBlock::Text { text }], stop, d);
    }
    let text_answer = || {
        // Texts are prefix-consistent in their length, so text past max_tokens (plus room for a
        // stop sequence) never matters; the clamp keeps a huge `tokens=N` directive cheap.
        let body = p
            .body_tokens_override
            .unwrap_or_else(|| natural_body_tokens(d))
            .min(p.max_tokens.saturating_add(64));
        let natural = natural_text(p.model_id, p.right, d.hash, body);
        let (text, stop) = shape_text(&natural, &stops, p.max_tokens);
        finish(vec![OutBlock::Text { text }], stop, d)
    };
    let (spec, preface) = match tools {
        ToolMode::None => return text_answer(),
        ToolMode::Auto(spec) => (
            *spec,
            Some(format!("[{}] Calling {}.", p.model_id, spec.name)),
        ),
        ToolMode::Forced(spec) => (*spec, None),
    };
    let mut rng = fastrand::Rng::with_seed(d.hash ^ 0x7001);
    let input = sample_for_schema(spec.input_schema.json.as_ref(), &mut rng, 0);
    let input_json = input.to_string();
    let mut blocks = Vec::new();
    if let Some(text) = preface {
        blocks.push(OutBlock::Text { text });
    }
    blocks.push(OutBlock::ToolUse {
        id: tool_use_id(d.hash, &spec.name),
        name: spec.name.clone(),
        input,
        input_json,
    });
    let answer = finish(blocks, StopReason::ToolUse, d);
    // A call that cannot fit in max_tokens would be cut mid-JSON; answer in (truncated) text instead.
    if answer.output_tokens > p.max_tokens {
        text_answer()
    } else {
        answer
    }
}

fn finish(blocks: Vec<OutBlock>, stop_reason: StopReason, d: PromptDigest) -> Answer {
    let output_tokens = blocks.iter().map(OutBlock::tokens).sum();
    Answer {
        blocks,
        stop_reason,
        input_tokens: d.input_tokens,
        output_tokens,
    }
}

/// `tooluse_` + 22 base62 characters, the shape Bedrock's ids have.
fn tool_use_id(seed: u64, name: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut h = Fnv::new();
    h.write(&seed.to_le_bytes());
    h.write(name.as_bytes());
    let mut rng = fastrand::Rng::with_seed(h.finish());
    let mut id = String::from("tooluse_");
    for _ in 0..22 {
        id.push(char::from(rng.choice(ALPHABET).copied().unwrap_or(b'A')));
    }
    id
}

/// A JSON value that satisfies the common parts of a JSON schema (type, properties, enum, items).
fn sample_for_schema(schema: Option<&Value>, rng: &mut fastrand::Rng, depth: u32) -> Value {
    let Some(schema) = schema.and_then(Value::as_object) else {
        return Value::Object(Map::new());
    };
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object");
    match ty {
        "string" => Value::from(rng.choice(VOCAB).copied().unwrap_or_default()),
        "integer" => Value::from(rng.u64(..100)),
        "number" => Value::from(f64::from(rng.u32(..1000)) / 10.0),
        "boolean" => Value::from(rng.bool()),
        "array" if depth < 8 => {
            Value::Array(vec![sample_for_schema(schema.get("items"), rng, depth + 1)])
        }
        "object" if depth < 8 => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    out.insert(k.clone(), sample_for_schema(Some(v), rng, depth + 1));
                }
            }
            Value::Object(out)
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_rule() {
        assert_eq!(count_tokens("hello world"), 4);
        assert_eq!(token_spans("hello world"), vec!["hell", "o", " worl", "d"]);
        assert_eq!(count_tokens("a, b!"), 4);
        assert_eq!(count_tokens("  "), 0);
        assert_eq!(count_tokens("é1"), 2);
        assert_eq!(token_spans("ab  "), vec!["ab  "]);
    }

    #[test]
    fn vocabulary_words_are_one_token_each() {
        for w in VOCAB {
            assert_eq!(count_tokens(w), 1, "{w}");
        }
    }

    #[test]
    fn prefixes_count_as_their_span_count() {
        let text = natural_text("anthropic.claude-3-haiku-20240307-v1:0", true, 42, 300);
        let spans = token_spans(&text);
        for n in [0, 1, 5, 19, 20, 21, 100, spans.len()] {
            assert_eq!(count_tokens(&spans[..n].concat()) as usize, n);
        }
        assert_eq!(spans.concat(), text);
    }

    #[test]
    fn natural_text_has_header_and_requested_length() {
        let model = "us.anthropic.claude-3-haiku-20240307-v1:0";
        let text = natural_text(model, false, 7, 50);
        assert!(text.starts_with(&format!("[{model}] ")));
        assert_eq!(
            count_tokens(&text),
            count_tokens(&format!("[{model}]")) + 50
        );
        assert_eq!(text, natural_text(model, false, 7, 50));
        assert_eq!(crate::world::grade(&text), Some(false));
        let right = natural_text(model, true, 7, 50);
        assert_eq!(crate::world::grade(&right), Some(true));
        assert_eq!(count_tokens(&right), count_tokens(&text));
        for n in 0..4 {
            let cut = natural_text(model, true, 7, n);
            assert_eq!(count_tokens(&cut), count_tokens(&format!("[{model}]")) + n);
        }
    }

    #[test]
    fn longer_texts_extend_shorter_ones() {
        let short = natural_text("m", true, 3, 50);
        assert!(natural_text("m", true, 3, 80).starts_with(&short));
    }

    #[test]
    fn shaping_applies_stop_sequences_then_max_tokens() {
        let text = "[m] Alpha beta gamma. Delta";
        let (t, r) = shape_text(text, &["gamma".into()], 100);
        assert_eq!(
            (t.as_str(), r),
            ("[m] Alpha beta ", StopReason::StopSequence)
        );
        let (t, r) = shape_text(text, &["gamma".into()], 4);
        assert_eq!((t.as_str(), r), ("[m] Alph", StopReason::MaxTokens));
        let (t, r) = shape_text(text, &[], 100);
        assert_eq!((t.as_str(), r), (text, StopReason::EndTurn));
    }

    #[test]
    fn tool_ids_look_like_bedrock_ids() {
        let id = tool_use_id(1, "weather");
        assert_eq!(id.len(), "tooluse_".len() + 22);
        assert_eq!(id, tool_use_id(1, "weather"));
        assert_ne!(id, tool_use_id(2, "weather"));
    }
}
