//! `calibrate`: a threshold for a target strong share (any prompt sample) or a target quality
//! gap recovered (labelled data). Prints one JSON object. Every input line must parse: a bad
//! line stops the run with its line number, since a silently smaller sample would move the
//! threshold.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use serde::Serialize;

use super::{row, scored_lines};
use crate::calibrate;
use crate::classify::Classifier;
use crate::request::Limits;

/// What to calibrate for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Send this share of the sample to strong.
    Share(f64),
    /// Recover this share of the quality gap (needs labels).
    Pgr(f64),
}

#[derive(Serialize)]
struct Output {
    threshold: f64,
    strong_share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pgr: Option<f64>,
    rows: usize,
}

/// Reads the sample, picks the threshold, writes `{"threshold", "strong_share", "pgr"?, "rows"}`.
pub fn run(
    classifier: &Classifier,
    limits: &Limits,
    target: Target,
    input: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<calibrate::Calibration> {
    let mut rows = Vec::new();
    for (n, scored) in scored_lines(input, classifier, limits) {
        let parsed = scored.and_then(|(r, c)| {
            let labels = match target {
                Target::Pgr(_) => r.labels()?,
                Target::Share(_) => (0.0, 0.0),
            };
            Ok(row(&c, labels))
        });
        rows.push(parsed.with_context(|| format!("line {n}"))?);
    }
    let cal = match target {
        Target::Share(x) => {
            let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
            calibrate::for_share(&scores, x)?
        }
        Target::Pgr(x) => calibrate::for_pgr(&rows, x)?,
    };
    serde_json::to_writer(
        &mut out,
        &Output {
            threshold: cal.threshold,
            strong_share: cal.strong_share,
            pgr: cal.pgr,
            rows: rows.len(),
        },
    )?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(cal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Weights;

    #[test]
    fn share_on_prompts_and_bad_line() {
        let c = Classifier::with_default_weights().unwrap();
        let input = "{\"prompt\":\"hi\"}\n{\"prompt\":\"Prove that there are infinitely many primes, step by step.\"}\n";
        let mut out = Vec::new();
        let cal = run(
            &c,
            &Limits::default(),
            Target::Share(0.5),
            input.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(cal.strong_share, 0.5);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rows"], 2);
        let neutral = Classifier::new(Weights::neutral()).unwrap();
        let err = run(
            &neutral,
            &Limits::default(),
            Target::Share(0.5),
            "{}\n".as_bytes(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("line 1"));
    }

    #[test]
    fn pgr_needs_labels() {
        let c = Classifier::new(Weights::neutral()).unwrap();
        let input = "{\"prompt\":\"a\",\"strong_score\":1,\"weak_score\":0}\n{\"prompt\":\"b\",\"strong_score\":1,\"weak_score\":1}\n";
        let cal = run(
            &c,
            &Limits::default(),
            Target::Pgr(0.8),
            input.as_bytes(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(cal.pgr, Some(1.0));
        assert!(
            run(
                &c,
                &Limits::default(),
                Target::Pgr(0.8),
                "{\"prompt\":\"a\"}\n".as_bytes(),
                Vec::new()
            )
            .is_err()
        );
    }
}
