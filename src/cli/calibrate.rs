//! `calibrate`: a fixed threshold for a target strong share (any prompt sample) or a target
//! quality gap recovered (labelled data). Prints one JSON object. When a caller has a target
//! strong share (`--target-share`, or the config), the object also holds the replay of the
//! target-share controller over the sample in file order (`replay`: the share it reached, after
//! warm-up too, and each caller's final threshold), so the fixed and the moving operating point
//! can be compared on the same traffic. Every input line must parse: a bad line stops the run
//! with its line number, since a silently smaller sample would move the threshold.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use serde::Serialize;

use super::{Replay, routed_lines, row};
use prompt_router_core::calibrate;
use prompt_router_core::decide::Decider;
use prompt_router_core::eval::CostAssumptions;
use prompt_router_core::request::Limits;

/// What to calibrate for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Send this share of the sample to strong.
    Share(f64),
    /// Recover this share of the quality gap (needs labels).
    Pgr(f64),
}

/// What `calibrate` needs beside the sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrateOptions {
    /// What to calibrate for.
    pub target: Target,
    /// Request limits the lines are validated against, as the server's.
    pub limits: Limits,
    /// CostAssumptions for the replay's cost saved (labelled samples).
    pub prices: CostAssumptions,
}

#[derive(Serialize)]
struct Output<'a> {
    threshold: f64,
    strong_share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pgr: Option<f64>,
    rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<&'a Replay>,
}

/// Reads the sample, picks the threshold, writes `{"threshold", "strong_share", "pgr"?, "rows",
/// "replay"?}`; returns the calibration and the replay, if a target share was in force.
pub fn run(
    decider: &Decider,
    opts: &CalibrateOptions,
    input: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<(calibrate::Calibration, Option<Replay>)> {
    let mut rows = Vec::new();
    let mut choices = Vec::new();
    let mut labelled = true;
    for (n, routed) in routed_lines(input, decider, &opts.limits) {
        let parsed = routed.and_then(|(r, c, choice)| {
            let labels = match (opts.target, r.labels()) {
                (_, Ok(labels)) => labels,
                (Target::Pgr(_), Err(e)) => return Err(e),
                (Target::Share(_), Err(_)) => {
                    labelled = false;
                    (0.0, 0.0)
                }
            };
            Ok((row(&c, labels), choice))
        });
        let (row, choice) = parsed.with_context(|| format!("line {n}"))?;
        rows.push(row);
        choices.push(choice);
    }
    let cal = match opts.target {
        Target::Share(x) => {
            let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
            calibrate::for_share(&scores, x)?
        }
        Target::Pgr(x) => calibrate::for_pgr(&rows, x)?,
    };
    let replay = decider
        .operating
        .has_target_share()
        .then(|| {
            Replay::new(
                decider,
                &choices,
                labelled.then_some((&rows[..], &opts.prices)),
            )
        })
        .transpose()?;
    serde_json::to_writer(
        &mut out,
        &Output {
            threshold: cal.threshold,
            strong_share: cal.strong_share,
            pgr: cal.pgr,
            rows: rows.len(),
            replay: replay.as_ref(),
        },
    )?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok((cal, replay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup;

    fn opts(target: Target) -> CalibrateOptions {
        CalibrateOptions {
            target,
            limits: Limits::default(),
            prices: CostAssumptions::default(),
        }
    }

    #[test]
    fn share_on_prompts_and_bad_line() {
        let decider = setup::decider_with(|_| {});
        let input = "{\"prompt\":\"hi\"}\n{\"prompt\":\"Prove that there are infinitely many primes, step by step.\"}\n";
        let mut out = Vec::new();
        let (cal, replay) = run(
            &decider,
            &opts(Target::Share(0.5)),
            input.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(cal.strong_share, 0.5);
        assert_eq!(replay, None);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rows"], 2);
        let err = run(
            &decider,
            &opts(Target::Share(0.5)),
            "{}\n".as_bytes(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("line 1"));
    }

    #[test]
    fn a_target_share_is_replayed_beside_the_fixed_threshold() {
        let decider = setup::decider_with(|raw| {
            raw.routing.target_strong_share = Some(0.5);
            raw.routing.share_warmup = 1;
        });
        let input = "{\"prompt\":\"hi\"}\n{\"prompt\":\"Prove it.\"}\n{\"prompt\":\"ok\"}\n";
        let mut out = Vec::new();
        let (_, replay) = run(
            &decider,
            &opts(Target::Share(0.5)),
            input.as_bytes(),
            &mut out,
        )
        .unwrap();
        let replay = replay.expect("replayed");
        assert_eq!((replay.rows, replay.after_warmup_rows), (3, 2));
        assert_eq!(replay.pgr, None);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["replay"]["after_warmup_rows"], 2);
        assert!(v["replay"]["final_points"]["default"]["threshold"].is_number());
    }

    #[test]
    fn pgr_needs_labels() {
        let decider = setup::decider_with(|_| {});
        let input = "{\"prompt\":\"a\",\"strong_score\":1,\"weak_score\":0}\n{\"prompt\":\"b\",\"strong_score\":1,\"weak_score\":1}\n";
        let (cal, _) = run(
            &decider,
            &opts(Target::Pgr(0.8)),
            input.as_bytes(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(cal.pgr, Some(1.0));
        assert!(
            run(
                &decider,
                &opts(Target::Pgr(0.8)),
                "{\"prompt\":\"a\"}\n".as_bytes(),
                Vec::new()
            )
            .is_err()
        );
    }
}
