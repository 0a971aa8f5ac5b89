//! `eval`: metrics of the classifier on labelled JSON lines, beside a length-only router
//! (score = estimated input tokens) and a random router (a fixed-seed run, seed
//! [`RANDOM_SEED`]). See [`crate::eval`] for the definitions.
//!
//! The baselines' scores are on other scales, so "at the threshold" they are taken at the
//! classifier's strong share there (the highest baseline threshold reaching that share), which
//! compares the routers at equal strong-model use. Every input line must parse: a bad line
//! stops the run with its line number, since skipping it would change the metrics.

use std::io::{BufRead, Write};

use anyhow::Context as _;
use serde::Serialize;

use super::{row, scored_lines};
use crate::calibrate;
use crate::classify::Classifier;
use crate::eval::{self, Baseline, Prices, RANDOM_SEED, Row, Summary};
use crate::request::Limits;

/// Options for `eval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Operating threshold for the classifier.
    pub threshold: f64,
    /// Prices and assumed output length for cost saved.
    pub prices: Prices,
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
    /// Threshold used for the operating point.
    pub threshold: f64,
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

/// Evaluates `rows` (classifier scores) at `threshold`, with both baselines.
pub fn compare(rows: &[Row], threshold: f64, prices: &Prices) -> anyhow::Result<Comparison> {
    let ours = eval::summarize(rows, threshold, prices)?;
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
    writeln!(
        out,
        "{title}: {} rows; operating point = classifier threshold {:.4} (baselines at the same strong share)",
        c.rows, c.classifier.threshold
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

/// Reads labelled lines, scores them with `classifier`, writes the comparison.
pub fn run(
    classifier: &Classifier,
    opts: &EvalOptions,
    input: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<Comparison> {
    let mut rows = Vec::new();
    for (n, scored) in scored_lines(input, classifier, &opts.limits) {
        let row = scored.and_then(|(r, c)| Ok(row(&c, r.labels()?)));
        rows.push(row.with_context(|| format!("line {n}"))?);
    }
    let c = compare(&rows, opts.threshold, &opts.prices)?;
    if opts.json {
        serde_json::to_writer_pretty(&mut out, &c)?;
        out.write_all(b"\n")?;
    } else {
        write_table(&mut out, "eval", &c)?;
        let p = &opts.prices;
        writeln!(
            out,
            "  prices per 1M tokens: strong ${}/${}, fast ${}/${} (in/out); {} output tokens assumed per prompt",
            p.strong_input, p.strong_output, p.weak_input, p.weak_output, p.output_tokens
        )?;
    }
    out.flush()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json() {
        let c = Classifier::with_default_weights().unwrap();
        let input = "\
{\"prompt\":\"hi\",\"strong_score\":1,\"weak_score\":1}
{\"prompt\":\"Prove the theorem step by step and explain why each lemma holds.\",\"strong_score\":1,\"weak_score\":0}
{\"prompt\":\"What is 2+2?\",\"strong_score\":1,\"weak_score\":1}
{\"prompt\":\"Write a detailed essay comparing two economic theories.\",\"strong_score\":1,\"weak_score\":0}
";
        let opts = EvalOptions {
            threshold: c.threshold(),
            prices: Prices::default(),
            json: false,
            limits: Limits::default(),
        };
        let mut out = Vec::new();
        let r = run(&c, &opts, input.as_bytes(), &mut out).unwrap();
        assert_eq!(r.rows, 4);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("length-only"));
        assert!(text.contains("random (seed 42)"));
        let mut out = Vec::new();
        run(
            &c,
            &EvalOptions { json: true, ..opts },
            input.as_bytes(),
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["classifier"]["apgr"].is_number());
    }

    #[test]
    fn bad_line_names_its_number() {
        let c = Classifier::with_default_weights().unwrap();
        let opts = EvalOptions {
            threshold: 0.5,
            prices: Prices::default(),
            json: false,
            limits: Limits::default(),
        };
        let input = "{\"prompt\":\"a\",\"strong_score\":1,\"weak_score\":0}\n{\"prompt\":\"b\"}\n";
        let err = run(&c, &opts, input.as_bytes(), Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"));
    }
}
