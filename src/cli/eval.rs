//! `eval`: metrics of the classifier on labelled JSON lines, beside a length-only router
//! (score = estimated input tokens) and a random router (a fixed-seed run, seed
//! [`RANDOM_SEED`]). See [`prompt_router_core::eval`] for the definitions.
//!
//! The classifier's operating point is its fixed threshold, or — when a caller has a target
//! strong share (`--target-share`, or the config) — the decisions the target-share controller
//! makes when the rows are replayed through it in file order, as the server would make them for
//! requests arriving in that order. The baselines' scores are on other scales, so "at the
//! threshold" they are taken at the classifier's strong share there (the highest baseline
//! threshold reaching that share), which compares the routers at equal strong-model use. Every
//! input line must parse: a bad line stops the run with its line number, since skipping it
//! would change the metrics.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use serde::Serialize;

use super::{Replay, routed_lines, row};
use prompt_router_core::calibrate;
use prompt_router_core::catalog::Tier;
use prompt_router_core::decide::Decider;
use prompt_router_core::eval::{
    self, Baseline, CostAssumptions, Operating, RANDOM_SEED, Row, Summary,
};
use prompt_router_core::request::Limits;

/// Options for `eval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// CostAssumptions and assumed output length for cost saved.
    pub prices: CostAssumptions,
    /// Print JSON instead of a table.
    pub json: bool,
    /// Request limits the lines are validated against, as the server's.
    pub limits: Limits,
}

/// One router's results.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RouterResult {
    /// APGR.
    pub apgr: f64,
    /// CPT(50%).
    pub cpt50: Option<f64>,
    /// CPT(80%).
    pub cpt80: Option<f64>,
    /// Threshold used for the operating point; `None` when it moved from row to row.
    pub threshold: Option<f64>,
    /// Strong share at the operating point.
    pub strong_share: f64,
    /// Quality gap recovered at the operating point.
    pub pgr: f64,
    /// Cost saved against all-strong at the operating point.
    pub cost_saved: f64,
}

impl From<Summary> for RouterResult {
    fn from(s: Summary) -> Self {
        Self {
            apgr: s.apgr,
            cpt50: s.cpt50,
            cpt80: s.cpt80,
            threshold: s.operating.threshold,
            strong_share: s.operating.strong_share,
            pgr: s.operating.pgr,
            cost_saved: s.operating.cost_saved,
        }
    }
}

/// The classifier and both baselines on the same rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// Rows evaluated.
    pub rows: usize,
    /// The classifier.
    pub classifier: RouterResult,
    /// Score = estimated input tokens.
    pub length_only: RouterResult,
    /// Fixed-seed random scores.
    pub random: RouterResult,
    /// Seed of the random router.
    pub random_seed: u64,
}

/// What `eval` reports: the comparison, and the replay when a target share was in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The classifier beside the baselines.
    #[serde(flatten)]
    pub comparison: Comparison,
    /// The target-share controller over the rows, in file order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
}

/// Evaluates `rows` (classifier scores) at `threshold`, with both baselines.
pub fn compare(
    rows: &[Row],
    threshold: f64,
    prices: &CostAssumptions,
) -> anyhow::Result<Comparison> {
    compare_at(rows, eval::at_threshold(rows, threshold, prices)?, prices)
}

/// Evaluates `rows` (classifier scores) with `operating` as the classifier's operating point,
/// with both baselines at its strong share.
pub fn compare_at(
    rows: &[Row],
    operating: Operating,
    prices: &CostAssumptions,
) -> anyhow::Result<Comparison> {
    let ours = eval::summarize_at(rows, operating)?;
    let baseline = |b: Baseline| -> anyhow::Result<RouterResult> {
        let r = b.rescore(rows);
        let scores: Vec<f64> = r.iter().map(|x| x.score).collect();
        let t = calibrate::for_share(&scores, ours.operating.strong_share)?.threshold;
        Ok(eval::summarize(&r, t, prices)?.into())
    };
    Ok(Comparison {
        rows: rows.len(),
        classifier: ours.into(),
        length_only: baseline(Baseline::Length)?,
        random: baseline(Baseline::Random)?,
        random_seed: RANDOM_SEED,
    })
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// Writes `c` as a human-readable table under `title`.
pub fn write_table(mut out: impl Write, title: &str, c: &Comparison) -> std::io::Result<()> {
    let point = c.classifier.threshold.map_or_else(
        || "the target-share controller replayed in file order".to_owned(),
        |t| format!("classifier threshold {t:.4}"),
    );
    writeln!(
        out,
        "{title}: {} rows; operating point = {point} (baselines at the same strong share)",
        c.rows
    )?;
    writeln!(
        out,
        "  {:<18} {:>7} {:>9} {:>9} {:>13} {:>14} {:>11}",
        "router", "APGR", "CPT(50%)", "CPT(80%)", "strong share", "gap recovered", "cost saved"
    )?;
    let random = format!("random (seed {})", c.random_seed);
    for (name, r) in [
        ("classifier", &c.classifier),
        ("length-only", &c.length_only),
        (random.as_str(), &c.random),
    ] {
        writeln!(
            out,
            "  {:<18} {:>7.4} {:>9} {:>9} {:>13.4} {:>14.4} {:>11.4}",
            name,
            r.apgr,
            opt(r.cpt50),
            opt(r.cpt80),
            r.strong_share,
            r.pgr,
            r.cost_saved
        )?;
    }
    Ok(())
}

/// Writes a replay's figures as table lines.
pub fn write_replay(mut out: impl Write, replay: &Replay) -> std::io::Result<()> {
    let after = replay
        .after_warmup_strong_share
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.4}"));
    writeln!(
        out,
        "  replay: strong share {:.4} over {} rows, {after} over the {} after warm-up",
        replay.strong_share, replay.rows, replay.after_warmup_rows
    )?;
    for (caller, point) in &replay.final_points {
        writeln!(
            out,
            "  final threshold {caller}: {:.4} ({})",
            point.threshold, point.operating_point
        )?;
    }
    Ok(())
}

/// Reads labelled lines, routes them through `decider` in file order, writes the comparison.
pub fn run(
    decider: &Decider,
    opts: &EvalOptions,
    input: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<Report> {
    let mut rows = Vec::new();
    let mut choices = Vec::new();
    for (n, routed) in routed_lines(input, decider, &opts.limits) {
        let (r, c, choice) = routed.with_context(|| format!("line {n}"))?;
        rows.push(row(&c, r.labels().with_context(|| format!("line {n}"))?));
        choices.push(choice);
    }
    let report = if decider.operating.has_target_share() {
        let strong: Vec<bool> = choices.iter().map(|c| c.tier == Tier::Strong).collect();
        Report {
            comparison: compare_at(
                &rows,
                eval::at_decisions(&rows, &strong, &opts.prices)?,
                &opts.prices,
            )?,
            replay: Some(Replay::new(decider, &choices, Some((&rows, &opts.prices)))?),
        }
    } else {
        Report {
            comparison: compare(&rows, decider.operating.fixed(), &opts.prices)?,
            replay: None,
        }
    };
    if opts.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        out.write_all(b"\n")?;
    } else {
        write_table(&mut out, "eval", &report.comparison)?;
        if let Some(replay) = &report.replay {
            write_replay(&mut out, replay)?;
        }
        let p = &opts.prices;
        writeln!(
            out,
            "  prices per 1M tokens: strong ${}/${}, fast ${}/${} (in/out); {} output tokens assumed per prompt",
            p.strong_input, p.strong_output, p.fast_input, p.fast_output, p.output_tokens
        )?;
    }
    out.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup;

    const LABELLED: &str = "\
{\"prompt\":\"hi\",\"strong_score\":1,\"weak_score\":1}
{\"prompt\":\"Prove the theorem step by step and explain why each lemma holds.\",\"strong_score\":1,\"weak_score\":0}
{\"prompt\":\"What is 2+2?\",\"strong_score\":1,\"weak_score\":1}
{\"prompt\":\"Write a detailed essay comparing two economic theories.\",\"strong_score\":1,\"weak_score\":0}
";

    fn opts(json: bool) -> EvalOptions {
        EvalOptions {
            prices: CostAssumptions::default(),
            json,
            limits: Limits::default(),
        }
    }

    #[test]
    fn table_and_json() {
        let decider = setup::decider_with(|_| {});
        let mut out = Vec::new();
        let r = run(&decider, &opts(false), LABELLED.as_bytes(), &mut out).unwrap();
        assert_eq!(r.comparison.rows, 4);
        assert_eq!(
            r.comparison.classifier.threshold,
            Some(decider.classifier().threshold())
        );
        assert_eq!(r.replay, None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("length-only"));
        assert!(text.contains("random (seed 42)"));
        let mut out = Vec::new();
        run(&decider, &opts(true), LABELLED.as_bytes(), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["classifier"]["apgr"].is_number());
        assert!(v.get("replay").is_none());
    }

    #[test]
    fn a_target_share_is_replayed_in_file_order() {
        let decider = setup::decider_with(|raw| {
            raw.routing.target_strong_share = Some(0.5);
            raw.routing.share_warmup = 2;
        });
        let mut out = Vec::new();
        let r = run(&decider, &opts(false), LABELLED.as_bytes(), &mut out).unwrap();
        let replay = r.replay.expect("replayed");
        assert_eq!((replay.rows, replay.after_warmup_rows), (4, 2));
        assert_eq!(r.comparison.classifier.threshold, None);
        assert_eq!(r.comparison.classifier.strong_share, replay.strong_share);
        assert_eq!(
            replay.final_points["default"].operating_point,
            "target_share"
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("target-share controller replayed"), "{text}");
        assert!(text.contains("final threshold default"), "{text}");
    }

    #[test]
    fn bad_line_names_its_number() {
        let decider = setup::decider_with(|raw| raw.routing.threshold = Some(0.5));
        let input = "{\"prompt\":\"a\",\"strong_score\":1,\"weak_score\":0}\n{\"prompt\":\"b\"}\n";
        let err = run(&decider, &opts(false), input.as_bytes(), Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"));
    }
}
