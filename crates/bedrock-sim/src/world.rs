//! The simulated world behind every answer's grade: each prompt's hidden difficulty, each
//! model's skill, whether a model answers a prompt right, and how a judge compares two answers.
//!
//! Everything here is pure and deterministic, so tests compute the truth the simulator answers
//! with. "The text" of a prompt is the text blocks of its last user message joined with `\n`.
//!
//! - Difficulty `d` in [0, 1]: from a `[sim:difficulty=D]` directive in the text, else from a
//!   stable hash of the whole text (FNV-1a, then a mixer), uniform over [0, 1).
//! - Skill `s` in [0, 1] from the model id (see [`World::default`]): ids containing `opus` 0.95,
//!   `sonnet` 0.9, `haiku` 0.3, anything else 0.6.
//! - A model answers right with probability `P = 1 − d·(1 − s)`: it is right iff a uniform draw
//!   from a hash of (model id, text) is below `P`. The model id is taken without an ARN prefix
//!   (up to the last `/`) or a geography prefix (`us.`, `eu.`, `apac.`, `us-gov.`, `global.`),
//!   so a profile and its base model agree, and draws for different models are independent.
//!
//! Over uniform difficulty a strong model (skill `1 − a`) beats a fast one (skill `1 − b`) on a
//! share `b/2 − ab/3` of prompts and loses on `a/2 − ab/3`; the gain in P(right) at difficulty
//! `d` is `d·(b − a)`, rising with difficulty. Sonnet against Haiku: better on 32.7%, worse on
//! 2.7%, tied on 64.7%.

use serde::{Deserialize, Serialize};

use super::faults;
use super::generate::Fnv;

/// The first sentence of a right answer's body.
pub const RIGHT_MARK: &str = "Right.";
/// The first sentence of a wrong answer's body.
pub const WRONG_MARK: &str = "Wrong.";

/// A skill for model ids containing `contains` (compared in ASCII lower case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkillRule {
    /// Substring of the model id.
    pub contains: String,
    /// Skill in [0, 1]: 1 is always right, 0 is right with probability `1 − d`.
    pub skill: f64,
}

/// The model skill table; [`World::default`] is the one documented in the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct World {
    /// Tried in order; the first rule whose `contains` is in the id gives the skill.
    pub skills: Vec<SkillRule>,
    /// The skill of ids no rule matches.
    pub default_skill: f64,
}

impl Default for World {
    fn default() -> Self {
        let rule = |contains: &str, skill| SkillRule {
            contains: contains.to_owned(),
            skill,
        };
        Self {
            skills: vec![rule("opus", 0.95), rule("sonnet", 0.9), rule("haiku", 0.3)],
            default_skill: 0.6,
        }
    }
}

/// How a judge compares two answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer A is better.
    A,
    /// Answer B is better.
    B,
    /// Neither is better.
    Tie,
}

impl World {
    /// Rejects skills outside [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        let bad = |s: f64| !(0.0..=1.0).contains(&s);
        if let Some((i, r)) = self.skills.iter().enumerate().find(|(_, r)| bad(r.skill)) {
            return Err(format!(
                "world.skills[{i}].skill ({}) must be within 0..=1",
                r.skill
            ));
        }
        if bad(self.default_skill) {
            return Err("world.defaultSkill must be within 0..=1".into());
        }
        Ok(())
    }

    /// The skill of `model_id`.
    pub fn skill(&self, model_id: &str) -> f64 {
        let id = model_id.to_ascii_lowercase();
        self.skills
            .iter()
            .find(|r| id.contains(&r.contains.to_ascii_lowercase()))
            .map_or(self.default_skill, |r| r.skill)
    }

    /// Probability that `model_id` answers `text` right.
    pub fn p_right(&self, model_id: &str, text: &str) -> f64 {
        1.0 - difficulty(text) * (1.0 - self.skill(model_id))
    }

    /// Whether `model_id` answers `text` right (deterministic).
    pub fn right(&self, model_id: &str, text: &str) -> bool {
        let mut h = Fnv::new();
        h.write(b"right");
        h.write(base_model(model_id).as_bytes());
        h.write(text.as_bytes());
        unit(h.finish()) < self.p_right(model_id, text)
    }

    /// Over uniform difficulty, the shares of prompts on which `strong` is right and `fast`
    /// wrong, and the other way round: `b/2 − ab/3` and `a/2 − ab/3` with `a`, `b` the two
    /// models' `1 − skill` (from `E[d] = 1/2`, `E[d²] = 1/3` and independent draws).
    pub fn uniform_shares(&self, strong: &str, fast: &str) -> (f64, f64) {
        let a = 1.0 - self.skill(strong);
        let b = 1.0 - self.skill(fast);
        (b / 2.0 - a * b / 3.0, a / 2.0 - a * b / 3.0)
    }

    /// The truth a fair judge finds for `text`: +1 when `strong` answers right and `fast`
    /// wrong, −1 the other way round, 0 when both are right or both wrong.
    pub fn preference(&self, strong: &str, fast: &str, text: &str) -> i8 {
        i8::from(self.right(strong, text)) - i8::from(self.right(fast, text))
    }
}

/// [`World::right`] in the default world.
pub fn right(model_id: &str, text: &str) -> bool {
    World::default().right(model_id, text)
}

/// [`World::preference`] in the default world.
pub fn preference(strong: &str, fast: &str, text: &str) -> i8 {
    World::default().preference(strong, fast, text)
}

/// The difficulty of `text`: its `difficulty=D` directive, else its hash mapped to [0, 1).
/// A text whose directives do not parse (the simulator rejects it) gets the hash.
pub fn difficulty(text: &str) -> f64 {
    difficulty_directive(text)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let mut h = Fnv::new();
            h.write(b"difficulty");
            h.write(text.as_bytes());
            unit(h.finish())
        })
}

/// The `difficulty=D` a text's directives give, if any; an error names a malformed directive
/// or a second `difficulty`.
pub(crate) fn difficulty_directive(text: &str) -> Result<Option<f64>, String> {
    let mut found: Option<(f64, String)> = None;
    for d in faults::parse_directives(text)? {
        if let Some(v) = d.difficulty {
            if let Some((_, first)) = &found {
                return Err(format!(
                    "Invalid simulator directive {}: difficulty is already given by {first}.",
                    d.source
                ));
            }
            found = Some((v, d.source));
        }
    }
    Ok(found.map(|(v, _)| v))
}

/// The grade an answer text carries: its body (after the `[model id] ` header, if any) starts
/// with [`RIGHT_MARK`] or [`WRONG_MARK`]. None for text without either (a tool call's preface,
/// an answer cut before its grade).
pub fn grade(answer: &str) -> Option<bool> {
    let answer = answer.trim_start();
    let body = match answer.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or("", |(_, body)| body),
        None => answer,
    };
    let body = body.trim_start();
    if body.starts_with(RIGHT_MARK) {
        Some(true)
    } else if body.starts_with(WRONG_MARK) {
        Some(false)
    } else {
        None
    }
}

/// What a fair judge says of two answers: the right one is better; both right or both wrong
/// tie. An answer without a grade counts as wrong.
pub fn verdict(answer_a: &str, answer_b: &str) -> Verdict {
    match (
        grade(answer_a).unwrap_or(false),
        grade(answer_b).unwrap_or(false),
    ) {
        (true, false) => Verdict::A,
        (false, true) => Verdict::B,
        _ => Verdict::Tie,
    }
}

/// The model id without an ARN prefix or a geography prefix.
fn base_model(model_id: &str) -> &str {
    let id = model_id.rsplit('/').next().unwrap_or(model_id);
    ["us.", "eu.", "apac.", "us-gov.", "global."]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id)
}

/// A 64-bit hash mapped to [0, 1), after a SplitMix64 finaliser: FNV-1a's high bits alone are
/// not uniform enough for short texts.
pub(crate) fn unit(hash: u64) -> f64 {
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let top = (z >> 11) as f64;
    top / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SONNET: &str = "us.anthropic.claude-3-5-sonnet-20241022-v2:0";
    const HAIKU: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

    fn prompts(n: u32) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("Question number {i}: how does this work?"))
    }

    #[test]
    fn difficulty_comes_from_the_directive_or_a_uniform_hash() {
        assert_eq!(difficulty("hard one [sim:difficulty=0.75]"), 0.75);
        assert_eq!(difficulty("[sim:ttft=1; difficulty=0]"), 0.0);
        let d = difficulty("What is a monad?");
        assert_eq!(d, difficulty("What is a monad?"));
        assert!((0.0..1.0).contains(&d));
        let ds: Vec<f64> = prompts(10_000).map(|p| difficulty(&p)).collect();
        for decile in 0..10 {
            let lo = f64::from(decile) / 10.0;
            let n = ds.iter().filter(|d| (lo..lo + 0.1).contains(*d)).count();
            assert!((850..1150).contains(&n), "decile {decile}: {n}");
        }
        assert!(difficulty_directive("[sim:difficulty=0.1][sim:difficulty=0.2]").is_err());
        assert_eq!(difficulty_directive("[sim:tokens=3]"), Ok(None));
    }

    #[test]
    fn skills_follow_the_id_and_profiles_agree_with_base_ids() {
        let w = World::default();
        assert_eq!(w.skill(SONNET), 0.9);
        assert_eq!(w.skill("anthropic.claude-3-opus-20240229-v1:0"), 0.95);
        assert_eq!(w.skill(HAIKU), 0.3);
        assert_eq!(w.skill("meta.llama3-8b-instruct-v1:0"), 0.6);
        for p in prompts(200) {
            let base = right("anthropic.claude-3-haiku-20240307-v1:0", &p);
            assert_eq!(right(HAIKU, &p), base);
            assert_eq!(right("eu.anthropic.claude-3-haiku-20240307-v1:0", &p), base);
            assert_eq!(
                right(
                    "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0",
                    &p
                ),
                base
            );
        }
        let bad = World {
            default_skill: 1.5,
            ..World::default()
        };
        assert!(bad.validate().unwrap_err().contains("defaultSkill"));
    }

    #[test]
    fn strong_wins_a_sizeable_share_fast_a_few_and_gain_rises_with_difficulty() {
        let n = 20_000;
        let (mut better, mut worse) = (0u32, 0u32);
        let mut by_half = [(0i32, 0u32); 2];
        for p in prompts(n) {
            let pref = preference(SONNET, HAIKU, &p);
            better += u32::from(pref > 0);
            worse += u32::from(pref < 0);
            let half = &mut by_half[usize::from(difficulty(&p) >= 0.5)];
            half.0 += i32::from(pref);
            half.1 += 1;
        }
        let share = |k: u32| f64::from(k) / f64::from(n);
        let (want_better, want_worse) = World::default().uniform_shares(SONNET, HAIKU);
        assert!((0.2..=0.5).contains(&want_better) && want_worse <= 0.05);
        // Binomial sd at n = 20 000 is under 0.0034; 0.012 is over 3.5 sd.
        assert!(
            (share(better) - want_better).abs() < 0.012,
            "{}",
            share(better)
        );
        assert!(
            (share(worse) - want_worse).abs() < 0.012,
            "{}",
            share(worse)
        );
        let gain = |(sum, count): (i32, u32)| f64::from(sum) / f64::from(count);
        // Expected mean gain 0.6·d: 0.15 on the easy half, 0.45 on the hard half.
        assert!(
            gain(by_half[0]) < 0.2 && gain(by_half[1]) > 0.4,
            "{by_half:?}"
        );
    }

    #[test]
    fn directive_difficulty_sets_the_odds() {
        let easy: u32 = (0..2000)
            .map(|i| u32::from(right(HAIKU, &format!("q{i} [sim:difficulty=0]"))))
            .sum();
        assert_eq!(easy, 2000);
        let hard: u32 = (0..2000)
            .map(|i| u32::from(right(HAIKU, &format!("q{i} [sim:difficulty=1]"))))
            .sum();
        // P(right) = 1 − 1·(1 − 0.3) = 0.3.
        assert!((500..700).contains(&hard), "{hard}");
    }

    proptest::proptest! {
        #[test]
        fn difficulty_is_in_the_unit_interval_and_stable(text in ".{0,200}") {
            let d = difficulty(&text);
            proptest::prop_assert!((0.0..=1.0).contains(&d));
            proptest::prop_assert_eq!(d, difficulty(&text));
        }

        #[test]
        fn a_directive_difficulty_wins_over_the_hash(text in "[a-z ]{0,80}", d in 0.0f64..=1.0) {
            let with = format!("{text} [sim:difficulty={d}]");
            proptest::prop_assert_eq!(difficulty(&with), d);
        }

        #[test]
        fn natural_answers_carry_their_grade(
            model in "[a-z0-9.:-]{1,40}",
            right in proptest::bool::ANY,
            seed in proptest::num::u64::ANY,
            body in 3u32..400,
        ) {
            let text = crate::generate::natural_text(&model, right, seed, body);
            proptest::prop_assert_eq!(grade(&text), Some(right));
        }
    }

    #[test]
    fn grades_are_read_from_the_answer_body() {
        assert_eq!(grade("[m] Right. The data"), Some(true));
        assert_eq!(grade("[m] Wrong."), Some(false));
        assert_eq!(grade("Right. no header"), Some(true));
        assert_eq!(grade("[m] Calling weather."), None);
        assert_eq!(grade("[m] Wron"), None);
        assert_eq!(verdict("[a] Right. x", "[b] Wrong. y"), Verdict::A);
        assert_eq!(verdict("[a] Wrong. x", "[b] Right. y"), Verdict::B);
        assert_eq!(verdict("[a] Right. x", "[b] Right. y"), Verdict::Tie);
        assert_eq!(verdict("[a] Wrong. x", ""), Verdict::Tie);
    }
}
