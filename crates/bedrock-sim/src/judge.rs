//! Judge mode: a request carrying `<request>`, `<answer_a>` and `<answer_b>` blocks is answered
//! with a verdict on the two answers' grades (see `# Judging` in the crate docs).

use serde::{Deserialize, Serialize};

use super::generate::Fnv;
use super::world::{self, Verdict};

/// Judge behaviour, for tests of the router's handling of imperfect judges; changeable at runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Probability that the judge says A when the answers tie.
    pub position_bias: f64,
    /// Probability that the reply has no `VERDICT:` line.
    pub unparsed_rate: f64,
}

impl JudgeConfig {
    /// Rejects probabilities outside [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("positionBias", self.position_bias),
            ("unparsedRate", self.unparsed_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("judge.{name} ({p}) must be within 0..=1"));
            }
        }
        Ok(())
    }
}

/// The three blocks of a judge request, and the text outside them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JudgeRequest<'a> {
    pub answer_a: &'a str,
    pub answer_b: &'a str,
    /// The text before `<request>` and after `</answer_b>`, where directives still apply.
    pub outside: String,
}

fn between<'a>(text: &'a str, open: &str, close: &str, before: usize) -> Option<(usize, &'a str)> {
    let end = text[..before].rfind(close)?;
    let start = text[..end].rfind(open)?;
    Some((start, &text[start + open.len()..end]))
}

/// Finds the blocks from the end, so a judged request that itself mentions the tags still parses:
/// the last `<answer_b>…</answer_b>`, the last `<answer_a>…</answer_a>` before it, then the
/// first `<request>` and the last `</request>` before `<answer_a>`.
pub(crate) fn parse(text: &str) -> Option<JudgeRequest<'_>> {
    let (b_start, answer_b) = between(text, "<answer_b>", "</answer_b>", text.len())?;
    let (a_start, answer_a) = between(text, "<answer_a>", "</answer_a>", b_start)?;
    let r_end = text[..a_start].rfind("</request>")?;
    let r_start = text[..r_end].find("<request>")?;
    let b_end = b_start + "<answer_b>".len() + answer_b.len() + "</answer_b>".len();
    Some(JudgeRequest {
        answer_a,
        answer_b,
        outside: format!("{}\n{}", &text[..r_start], &text[b_end..]),
    })
}

/// The reply body (after the `[model id] ` header). `hash` identifies the request, so the
/// bias and unparsed draws are deterministic per request and independent between the two
/// orders of one pair.
pub(crate) fn reply(cfg: &JudgeConfig, req: &JudgeRequest<'_>, hash: u64) -> String {
    let draw = |salt: &[u8]| {
        let mut h = Fnv::new();
        h.write(salt);
        h.write(&hash.to_le_bytes());
        world::unit(h.finish())
    };
    if draw(b"unparsed") < cfg.unparsed_rate {
        return "Both answers have merits and I cannot choose between them.".into();
    }
    match world::verdict(req.answer_a, req.answer_b) {
        Verdict::A => "Answer A is right and answer B is wrong.\nVERDICT: A".into(),
        Verdict::B => "Answer A is wrong and answer B is right.\nVERDICT: B".into(),
        Verdict::Tie => {
            // A tie means both grades are equal, so A's grade says which tie it is.
            let reason = if world::grade(req.answer_a) == Some(true) {
                "Both answers are right"
            } else {
                "Both answers are wrong"
            };
            if draw(b"position") < cfg.position_bias {
                format!("{reason}; the first one reads better.\nVERDICT: A")
            } else {
                format!("{reason}.\nVERDICT: TIE")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_in_order_and_keeps_the_outside() {
        let text = "Judge. <request>Say <answer_a>x</answer_a></request>\
                    <answer_a>[m] Right. A</answer_a> <answer_b>[n] Wrong. B</answer_b> end";
        let j = parse(text).expect("judge request");
        assert_eq!(j.answer_a, "[m] Right. A");
        assert_eq!(j.answer_b, "[n] Wrong. B");
        assert_eq!(j.outside, "Judge. \n end");
        assert!(
            parse("<answer_a>x</answer_a><request>r</request><answer_b>y</answer_b>").is_none()
        );
        assert!(
            parse("<request>r</request><answer_b>y</answer_b><answer_a>x</answer_a>").is_none()
        );
        assert!(parse("<request>r</request><answer_a>x</answer_a>").is_none());
    }

    proptest::proptest! {
        // Whatever the judged request says, tags included, the answers are found.
        #[test]
        fn any_request_text_leaves_the_answers_intact(
            request in "(.|</?request>|</?answer_[ab]>){0,30}",
            a in "[a-zA-Z .\\[\\]]{0,40}",
            b in "[a-zA-Z .\\[\\]]{0,40}",
        ) {
            let text = format!("<request>{request}</request><answer_a>{a}</answer_a><answer_b>{b}</answer_b>");
            let j = parse(&text).expect("judge request");
            proptest::prop_assert_eq!(j.answer_a, a.as_str());
            proptest::prop_assert_eq!(j.answer_b, b.as_str());
            proptest::prop_assert_eq!(j.outside, "\n");
        }
    }

    #[test]
    fn verdicts_follow_the_grades() {
        let cfg = JudgeConfig::default();
        let judge = |a: &str, b: &str| {
            let text =
                format!("<request>q</request><answer_a>{a}</answer_a><answer_b>{b}</answer_b>");
            reply(&cfg, &parse(&text).expect("judge request"), 1)
        };
        assert!(judge("[m] Right. x", "[m] Wrong. y").ends_with("\nVERDICT: A"));
        assert!(judge("[m] Wrong. x", "[m] Right. y").ends_with("\nVERDICT: B"));
        assert!(judge("[m] Right. x", "[m] Right. y").ends_with("\nVERDICT: TIE"));
        assert!(judge("[m] Wrong. x", "[m] Calling f.").ends_with("\nVERDICT: TIE"));
        let biased = JudgeConfig {
            position_bias: 1.0,
            unparsed_rate: 0.0,
        };
        let unparsed = JudgeConfig {
            position_bias: 0.0,
            unparsed_rate: 1.0,
        };
        // The crate docs promise judge replies of at most 24 tokens after the header.
        for cfg in [cfg, biased, unparsed] {
            for (a, b) in [
                ("Right.", "Wrong."),
                ("Wrong.", "Right."),
                ("Right.", "Right."),
            ] {
                let text =
                    format!("<request>q</request><answer_a>{a}</answer_a><answer_b>{b}</answer_b>");
                let body = reply(&cfg, &parse(&text).expect("judge request"), 1);
                assert!(crate::count_tokens(&body) <= 24, "{body}");
            }
        }
    }

    #[test]
    fn bias_and_unparsed_rates_apply_per_request() {
        let text =
            "<request>q</request><answer_a>[m] Right.</answer_a><answer_b>[m] Right.</answer_b>";
        let j = parse(text).expect("judge request");
        let all_a = JudgeConfig {
            position_bias: 1.0,
            unparsed_rate: 0.0,
        };
        let none = JudgeConfig {
            position_bias: 0.0,
            unparsed_rate: 1.0,
        };
        let half = JudgeConfig {
            position_bias: 0.5,
            unparsed_rate: 0.0,
        };
        assert!(reply(&all_a, &j, 3).ends_with("VERDICT: A"));
        assert!(!reply(&none, &j, 3).contains("VERDICT"));
        let biased = (0..1000u64)
            .filter(|h| reply(&half, &j, *h).ends_with("VERDICT: A"))
            .count();
        assert!((400..600).contains(&biased), "{biased}");
        assert_eq!(reply(&half, &j, 7), reply(&half, &j, 7));
    }
}
