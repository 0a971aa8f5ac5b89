//! The simulated world through the SDK: graded answers, the difficulty directive, judge mode
//! and its admin knobs.

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamOutput as StreamResponse;
use aws_sdk_bedrockruntime::types::{
    ContentBlockDelta, ConverseStreamOutput as Event, InferenceConfiguration, SystemContentBlock,
};
use bedrock_sim::world::{self, Verdict};
use bedrock_sim::{JudgeConfig, count_tokens};
use serde_json::{Value, json};

use crate::http_client;
use crate::*;

const JUDGE_SYSTEM: &str = "Compare the two answers to the request. End with a line \
                            VERDICT: A, VERDICT: B or VERDICT: TIE.";

async fn answer(c: &Client, model: &str, prompt: &str) -> String {
    let out = c
        .converse()
        .model_id(model)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
    text_of(out.output())
}

/// The text deltas of a ConverseStream answer, concatenated.
async fn stream_text(c: &Client, model: &str, prompt: &str) -> String {
    let StreamResponse { mut stream, .. } = c
        .converse_stream()
        .model_id(model)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(event) = stream.recv().await.unwrap() {
        if let Event::ContentBlockDelta(d) = event
            && let Some(ContentBlockDelta::Text(t)) = d.delta()
        {
            text.push_str(t);
        }
    }
    text
}

fn judge_prompt(request: &str, a: &str, b: &str) -> String {
    format!("<request>{request}</request>\n<answer_a>{a}</answer_a>\n<answer_b>{b}</answer_b>")
}

async fn judge(c: &Client, prompt: &str) -> String {
    let out = c
        .converse()
        .model_id(SONNET)
        .system(SystemContentBlock::Text(JUDGE_SYSTEM.into()))
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
    let text = text_of(out.output());
    assert_eq!(
        out.usage().unwrap().output_tokens() as u32,
        count_tokens(&text)
    );
    text
}

/// The last `VERDICT:` line, as the router reads it.
fn verdict_line(reply: &str) -> Option<&str> {
    reply
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("VERDICT: "))
}

fn expected(v: Verdict) -> &'static str {
    match v {
        Verdict::A => "A",
        Verdict::B => "B",
        Verdict::Tie => "TIE",
    }
}

/// A prompt for each (strong right, fast right) combination, found through `world`.
fn one_prompt_per_combination() -> Vec<(String, bool, bool)> {
    let mut found: Vec<(String, bool, bool)> = Vec::new();
    for i in 0.. {
        let p = format!("Explain topic {i} in detail.");
        let combo = (world::right(SONNET, &p), world::right(HAIKU, &p));
        if !found.iter().any(|(_, s, f)| (*s, *f) == combo) {
            found.push((p, combo.0, combo.1));
        }
        if found.len() == 4 {
            return found;
        }
    }
    unreachable!()
}

async fn admin(h: &SimHandle, method: &str, body: &str) -> (u16, Value) {
    let reply = quick(http_client::send(
        &h.addr().to_string(),
        method,
        "/_sim/judge",
        &[("content-type", "application/json")],
        body.as_bytes(),
    ))
    .await
    .unwrap();
    (
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

fn validation_message(err: aws_sdk_bedrockruntime::error::SdkError<ConverseError>) -> String {
    match err.into_service_error() {
        ConverseError::ValidationException(e) => e.message().unwrap_or_default().to_owned(),
        other => panic!("expected ValidationException, got {other:?}"),
    }
}

#[tokio::test]
async fn answers_carry_the_grade_world_gives_them() {
    let h = sim().await;
    let c = client(&h);
    let (mut right, mut wrong) = (0, 0);
    for i in 0..40 {
        let prompt = format!("How do I tune query {i}?");
        for model in [SONNET, HAIKU] {
            let text = answer(&c, model, &prompt).await;
            let graded = world::grade(&text);
            assert_eq!(
                graded,
                Some(world::right(model, &prompt)),
                "{model}: {text}"
            );
            assert_eq!(answer(&c, model, &prompt).await, text);
            if graded == Some(true) {
                right += 1;
            } else {
                wrong += 1;
            }
        }
    }
    assert!(right > 0 && wrong > 0, "{right} right, {wrong} wrong");

    // The directive fixes the difficulty and changes nothing else about the request.
    for i in 0..10 {
        let easy = format!("Easy {i} [sim:difficulty=0]");
        assert!(world::grade(&answer(&c, HAIKU, &easy).await) == Some(true));
    }
    let hard: Vec<String> = (0..40)
        .map(|i| format!("Hard {i} [sim:difficulty=1]"))
        .collect();
    for p in &hard {
        assert_eq!(
            world::grade(&answer(&c, HAIKU, p).await),
            Some(world::right(HAIKU, p))
        );
    }
    assert!(hard.iter().any(|p| !world::right(HAIKU, p)));

    // A stream carries the same graded text.
    let prompt = "How do I tune query 3?";
    let streamed = stream_text(&c, HAIKU, prompt).await;
    assert_eq!(streamed, answer(&c, HAIKU, prompt).await);
}

#[tokio::test]
async fn judge_verdicts_match_the_world_for_every_grade_pair_in_both_orders() {
    let h = sim().await;
    let c = client(&h);
    for (prompt, strong_right, fast_right) in one_prompt_per_combination() {
        let strong = answer(&c, SONNET, &prompt).await;
        let fast = answer(&c, HAIKU, &prompt).await;
        assert_eq!(world::grade(&strong), Some(strong_right));
        assert_eq!(world::grade(&fast), Some(fast_right));
        let truth = world::preference(SONNET, HAIKU, &prompt);
        let (strong_first, fast_first) = match truth {
            1 => ("A", "B"),
            -1 => ("B", "A"),
            _ => ("TIE", "TIE"),
        };
        let reply = judge(&c, &judge_prompt(&prompt, &strong, &fast)).await;
        assert!(reply.starts_with(&format!("[{SONNET}] ")), "{reply}");
        assert_eq!(verdict_line(&reply), Some(strong_first), "{reply}");
        assert_eq!(
            verdict_line(&reply),
            Some(expected(world::verdict(&strong, &fast)))
        );
        let swapped = judge(&c, &judge_prompt(&prompt, &fast, &strong)).await;
        assert_eq!(verdict_line(&swapped), Some(fast_first), "{swapped}");
        // ConverseStream judges alike.
        let streamed = stream_text(&c, SONNET, &judge_prompt(&prompt, &strong, &fast)).await;
        assert_eq!(streamed, reply);
    }
}

#[tokio::test]
async fn directives_apply_outside_the_judged_blocks_only() {
    let h = sim().await;
    let c = client(&h);
    let request = "Summarise this [sim:fail=ThrottlingException] [sim:difficulty=1]";
    let a = "[m] Right. The data.";
    let b = "[m] Wrong. The code.";
    let reply = judge(&c, &judge_prompt(request, a, b)).await;
    assert_eq!(verdict_line(&reply), Some("A"));

    let outside = format!(
        "{} [sim:fail=ThrottlingException]",
        judge_prompt(request, a, b)
    );
    let err = c
        .converse()
        .model_id(SONNET)
        .messages(user(&outside))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        ConverseError::ThrottlingException(_)
    ));

    // A judge reply cut by maxTokens loses its verdict, as a real one would.
    let cut = c
        .converse()
        .model_id(SONNET)
        .messages(user(&judge_prompt(request, a, b)))
        .inference_config(InferenceConfiguration::builder().max_tokens(5).build())
        .send()
        .await
        .unwrap();
    assert_eq!(verdict_line(&text_of(cut.output())), None);
}

#[tokio::test]
async fn position_bias_and_unparsed_replies_are_set_through_the_admin_endpoint() {
    let h = sim().await;
    let c = client(&h);
    let tie = |i: u32| judge_prompt(&format!("q{i}"), "[m] Right. x", "[n] Right. y");
    let win = judge_prompt("q", "[m] Wrong. x", "[n] Right. y");
    assert_eq!(verdict_line(&judge(&c, &tie(0)).await), Some("TIE"));

    let (status, body) = admin(&h, "POST", r#"{"positionBias":1.0}"#).await;
    assert_eq!(
        (status, body),
        (200, json!({ "positionBias": 1.0, "unparsedRate": 0.0 }))
    );
    for i in 0..5 {
        assert_eq!(verdict_line(&judge(&c, &tie(i)).await), Some("A"));
    }
    assert_eq!(verdict_line(&judge(&c, &win).await), Some("B"));

    admin(&h, "POST", r#"{"positionBias":0.5}"#).await;
    let mut biased = 0;
    for i in 0..60 {
        let v = judge(&c, &tie(i)).await;
        biased += u32::from(verdict_line(&v) == Some("A"));
    }
    assert!((10..50).contains(&biased), "{biased} of 60");

    admin(&h, "POST", r#"{"unparsedRate":1}"#).await;
    assert_eq!(
        h.judge(),
        JudgeConfig {
            position_bias: 0.0,
            unparsed_rate: 1.0
        }
    );
    let reply = judge(&c, &win).await;
    assert!(!reply.contains("VERDICT"), "{reply}");

    let (status, body) = admin(&h, "POST", r#"{"unparsedRate":2}"#).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("unparsedRate"));
    assert_eq!(admin(&h, "GET", "").await.1["unparsedRate"], 1.0);
    h.set_judge(JudgeConfig::default()).unwrap();
    assert_eq!(verdict_line(&judge(&c, &win).await), Some("B"));
}

#[tokio::test]
async fn judge_settings_at_start_apply_and_bad_ones_refuse_to_start() {
    let h = sim_with(SimConfig {
        judge: JudgeConfig {
            position_bias: 1.0,
            unparsed_rate: 0.0,
        },
        ..SimConfig::default()
    })
    .await;
    let c = client(&h);
    let tie = judge_prompt("q", "[m] Wrong. x", "[n] Wrong. y");
    assert_eq!(verdict_line(&judge(&c, &tie).await), Some("A"));
    let bad = SimConfig {
        judge: JudgeConfig {
            position_bias: -0.1,
            unparsed_rate: 0.0,
        },
        ..SimConfig::default()
    };
    let err = bedrock_sim::start("127.0.0.1:0".parse().unwrap(), bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("positionBias"), "{err}");
}

#[tokio::test]
async fn the_skill_table_is_set_at_start() {
    let perfect = world::World {
        skills: vec![world::SkillRule {
            contains: "haiku".into(),
            skill: 1.0,
        }],
        default_skill: 0.0,
    };
    let h = sim_with(SimConfig {
        world: perfect.clone(),
        ..SimConfig::default()
    })
    .await;
    let c = client(&h);
    let hard: Vec<String> = (0..20)
        .map(|i| format!("q{i} [sim:difficulty=1]"))
        .collect();
    for p in &hard {
        assert_eq!(world::grade(&answer(&c, HAIKU, p).await), Some(true));
        assert_eq!(
            world::grade(&answer(&c, SONNET, p).await),
            Some(perfect.right(SONNET, p))
        );
    }
    // Skill 0 at difficulty 1 is never right.
    assert!(hard.iter().all(|p| !perfect.right(SONNET, p)));
    let bad = SimConfig {
        world: world::World {
            default_skill: 2.0,
            ..world::World::default()
        },
        ..SimConfig::default()
    };
    let err = bedrock_sim::start("127.0.0.1:0".parse().unwrap(), bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("defaultSkill"), "{err}");
}

#[tokio::test]
async fn a_malformed_difficulty_is_a_validation_exception_naming_it() {
    let h = sim().await;
    let c = client(&h);
    for (prompt, needle) in [
        ("q [sim:difficulty=1.5]", "[sim:difficulty=1.5]"),
        (
            "q [sim:difficulty=hard]",
            "'difficulty=hard' is not a number",
        ),
        ("q [sim:difficulty]", "'difficulty' needs a value"),
        (
            "q [sim:difficulty=0.2] [sim:difficulty=0.3]",
            "difficulty is already given by [sim:difficulty=0.2]",
        ),
    ] {
        let err = c
            .converse()
            .model_id(HAIKU)
            .messages(user(prompt))
            .send()
            .await
            .unwrap_err();
        let msg = validation_message(err);
        assert!(msg.contains(needle), "{prompt}: {msg}");
    }
    let err = c
        .converse()
        .model_id(HAIKU)
        .system(SystemContentBlock::Text("[sim:difficulty=0.5]".into()))
        .messages(user("q"))
        .send()
        .await
        .unwrap_err();
    assert!(validation_message(err).contains("belongs in the last user message"));
}
