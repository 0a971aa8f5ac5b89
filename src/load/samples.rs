//! What the load generator sends: built-in prompts spanning trivial to hard, or JSON lines
//! from a file.

use std::io::BufRead;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{cli, pb};

/// One kind of request the load generator sends.
#[derive(Debug, Clone)]
pub struct Sample {
    /// A short name for reports.
    pub name: String,
    /// The request, sent as is.
    pub request: pb::ConverseRequest,
    /// Send through ConverseStream instead of Converse.
    pub stream: bool,
}

/// The caller name load requests carry unless a sample sets its own.
pub const CALLER: &str = "load";

/// How a built-in sample is routed.
#[derive(Clone, Copy)]
enum Mode {
    Auto,
    Strong,
    Fast,
}

/// (name, prompt, streamed, mode, max_tokens). Roughly the shape of internal traffic: most
/// requests short and easy, a third streamed, a few forced by callers that know what they need.
const BUILT_IN: &[(&str, &str, bool, Mode, u32)] = &[
    ("greeting", "hi", false, Mode::Auto, 64),
    (
        "capital",
        "What is the capital of France?",
        false,
        Mode::Auto,
        64,
    ),
    (
        "translate",
        "Translate 'good morning, see you tomorrow' into Spanish.",
        false,
        Mode::Auto,
        64,
    ),
    (
        "spelling",
        "Fix the spelling: 'I recieved the pakage yesterday.'",
        false,
        Mode::Auto,
        64,
    ),
    (
        "classify-ticket",
        "Label this support ticket as billing, bug or other: 'My invoice shows the wrong VAT number.'",
        false,
        Mode::Auto,
        16,
    ),
    (
        "summary",
        "Summarise in one sentence: The quarterly report shows revenue up 4%, costs flat, and \
         two new enterprise customers signed in March.",
        true,
        Mode::Auto,
        128,
    ),
    (
        "extract",
        "Extract the date and the amount from: 'Paid 42.50 EUR on 3 March 2026 for parking.'",
        false,
        Mode::Auto,
        64,
    ),
    (
        "headline",
        "Write a short, friendly subject line for an email announcing a team lunch on Friday.",
        true,
        Mode::Auto,
        64,
    ),
    (
        "sql-simple",
        "Write a SQL query that counts the rows of the orders table per customer_id.",
        false,
        Mode::Auto,
        256,
    ),
    (
        "regex",
        "Give me a regular expression that matches ISO dates like 2026-11-25.",
        true,
        Mode::Auto,
        128,
    ),
    (
        "explain-concept",
        "Explain the difference between a process and a thread, with one example of each.",
        true,
        Mode::Auto,
        512,
    ),
    (
        "code-review",
        "Review this Rust function and point out bugs and edge cases:\n```rust\nfn mean(xs: &[f64]) -> f64 {\n    let mut s = 0.0;\n    for i in 0..=xs.len() { s += xs[i]; }\n    s / xs.len() as f64\n}\n```",
        true,
        Mode::Auto,
        1024,
    ),
    (
        "proof",
        "Prove that the square root of 2 is irrational. Then explain, step by step, why the \
         same argument fails for the square root of 4.",
        true,
        Mode::Auto,
        1024,
    ),
    (
        "math-word",
        "A tank fills at 12 litres per minute and drains at 7 litres per minute through a leak. \
         It starts with 30 litres and holds 250. How long until it is full? Show each step and \
         check the answer.",
        false,
        Mode::Auto,
        512,
    ),
    (
        "design-tradeoffs",
        "Compare event sourcing with a conventional CRUD database for an order-management \
         system: analyse consistency, auditability, schema evolution and operational cost, \
         list the risks of each, and recommend one with justification for a team of five.",
        true,
        Mode::Auto,
        2048,
    ),
    (
        "multi-part",
        "1) Derive the closed form of the sum of the first n squares. 2) Prove it by induction. \
         3) Write a Python function that checks it for n up to 1000. 4) Explain the complexity \
         of your check.",
        false,
        Mode::Auto,
        2048,
    ),
    (
        "algorithm",
        "Design an algorithm to find the k most frequent words in a 50 GB log file on a machine \
         with 4 GB of RAM. Analyse its time and memory complexity and the trade-offs against \
         an approximate streaming approach.",
        true,
        Mode::Auto,
        2048,
    ),
    (
        "forced-strong",
        "Draft the customer-facing apology for yesterday's outage.",
        false,
        Mode::Strong,
        512,
    ),
    (
        "forced-fast",
        "Reply with OK if this JSON is valid: {\"a\": 1}",
        false,
        Mode::Fast,
        16,
    ),
    (
        "forced-fast-stream",
        "List three colours.",
        true,
        Mode::Fast,
        32,
    ),
];

/// The built-in mix: trivial to hard prompts, a third streamed, some forced to a tier.
pub fn built_in() -> Vec<Sample> {
    BUILT_IN
        .iter()
        .map(|&(name, prompt, stream, mode, max_tokens)| {
            let mode = match mode {
                Mode::Auto => pb::RoutingMode::Auto,
                Mode::Strong => pb::RoutingMode::ForceStrong,
                Mode::Fast => pb::RoutingMode::ForceFast,
            };
            let mut request = ask(prompt);
            request.inference_config = Some(pb::InferenceConfig {
                max_tokens: Some(max_tokens),
                ..Default::default()
            });
            if let Some(routing) = &mut request.routing {
                routing.mode = mode as i32;
            }
            Sample {
                name: name.to_owned(),
                request,
                stream,
            }
        })
        .collect()
}

/// A one-turn request from the load caller.
pub fn ask(prompt: &str) -> pb::ConverseRequest {
    from_load(cli::single_prompt(prompt.to_owned()))
}

/// Names the load generator as the caller, unless the request names one.
fn from_load(mut request: pb::ConverseRequest) -> pb::ConverseRequest {
    let routing = request.routing.get_or_insert_with(Default::default);
    if routing.caller.is_empty() {
        routing.caller = CALLER.to_owned();
    }
    request
}

/// Reads samples from JSON lines: `{"prompt": "…"}` or a request in the `router.v1` JSON
/// mapping (`{"messages": […], "routing": {…}, …}`), either with optional `"stream": true` and
/// `"name"`. Blank lines are skipped; a bad line is an error naming its number.
pub fn read(input: impl BufRead) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        samples.push(parse(&line, number).with_context(|| format!("line {number}"))?);
    }
    if samples.is_empty() {
        bail!("the prompts file has no samples");
    }
    Ok(samples)
}

fn parse(line: &str, number: usize) -> anyhow::Result<Sample> {
    let Value::Object(mut fields) = serde_json::from_str(line).context("not a JSON object")? else {
        bail!("not a JSON object");
    };
    let stream = match fields.remove("stream") {
        None => false,
        Some(Value::Bool(stream)) => stream,
        Some(_) => bail!("`stream` must be true or false"),
    };
    let name = match fields.remove("name") {
        None => format!("line-{number}"),
        Some(Value::String(name)) => name,
        Some(_) => bail!("`name` must be a string"),
    };
    let request = from_load(cli::request_of(fields)?);
    Ok(Sample {
        name,
        request,
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_mix_streams_some_and_forces_both_tiers() {
        let samples = built_in();
        let streamed = samples.iter().filter(|s| s.stream).count();
        assert!(streamed * 4 >= samples.len() && streamed * 2 <= samples.len());
        for mode in [pb::RoutingMode::ForceStrong, pb::RoutingMode::ForceFast] {
            assert!(
                samples
                    .iter()
                    .any(|s| { s.request.routing.as_ref().map(|r| r.mode) == Some(mode as i32) })
            );
        }
    }

    #[test]
    fn lines_are_prompts_or_requests() {
        let text = "{\"prompt\": \"hi\", \"stream\": true}\n\n\
                    {\"name\": \"full\", \"messages\": [{\"role\": \"ROLE_USER\", \"content\": [{\"text\": \"yo\"}]}], \
                     \"routing\": {\"mode\": \"ROUTING_MODE_FORCE_FAST\"}}\n";
        let samples = read(text.as_bytes()).expect("valid");
        assert_eq!(samples.len(), 2);
        assert!(samples[0].stream);
        assert_eq!(samples[0].name, "line-1");
        assert_eq!(samples[1].name, "full");
        let routing = samples[1].request.routing.as_ref().expect("routing");
        assert_eq!(routing.mode, pb::RoutingMode::ForceFast as i32);
        assert_eq!(routing.caller, CALLER);
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, needle) in [
            ("{\"prompt\": 3}", "line 1"),
            ("{\"prompt\": \"a\"}\n[1]", "line 2"),
            ("{\"prompt\": \"a\", \"stream\": \"yes\"}", "`stream`"),
            ("", "no samples"),
        ] {
            let error = format!("{:#}", read(text.as_bytes()).expect_err(text));
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
