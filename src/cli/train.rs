//! `train FILE...` and `train --labels STORE`: fits the classifier on labelled JSON lines and
//! on label rows collected by duels and feedback, reports held-out results per file (per
//! store) and pooled, cross-validation by task family, and writes the weights file.
//!
//! Label rows become examples by [`LabelRow::example`]; a row routed by a classifier with
//! other features cannot (its vector means something else) and is counted and skipped, as
//! are torn last lines of the file store. A store's rows are one task family, the store.
//!
//! Split: a row is held out iff `crc32(id) % 5 == 0` ([`is_held_out`]); the weights are fitted
//! on the other rows of every file pooled (a scored row counts once, a judged row
//! `judged_weight` times), the logit is stretched ([`train::spread`]), and the stored threshold
//! is chosen on the pooled training rows ([`choose_threshold`]). Every input line must parse: a
//! bad line stops the run with its file and line number.
//!
//! Cross-validation by task family: for each family (a line's `family` or `source`, else its
//! file), the whole procedure — fit, stretch, threshold — is run again on the training rows of
//! every other family, and that family's rows are scored: how the classifier does on a kind of
//! traffic it has never seen.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{Context as _, bail};

use super::eval::{compare, write_table};
use super::scored_lines;
use crate::labels::ReadRows;
use prompt_router_core::classify::{Classifier, Feature, FileSummary, Metadata, Rescale, Weights};
use prompt_router_core::eval::{self, Baseline, CostAssumptions, Row};
use prompt_router_core::quality::label::LabelRow;
use prompt_router_core::request::Limits;
use prompt_router_core::train::{
    self, Example, FittedScore, TrainOptions, choose_threshold, is_held_out, score_rows,
};

/// Options for `train`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainCliOptions {
    /// Model fitting settings.
    pub train: TrainOptions,
    /// How many scored rows one judged row counts as in the fit.
    pub judged_weight: f64,
    /// Run the cross-validation by task family.
    pub cross_validate: bool,
    /// CostAssumptions for the cost figures in the report.
    pub prices: CostAssumptions,
    /// Request limits the lines are validated against, as the server's.
    pub limits: Limits,
    /// What `train.prior_weights` came from, for the weights file's method text.
    pub prior_name: Option<String>,
}

/// One training or held-out row and its task family.
#[derive(Debug, Clone)]
struct Labelled {
    family: String,
    example: Example,
}

struct FileRows {
    name: String,
    rows: usize,
    train: Vec<Labelled>,
    held_out: Vec<Labelled>,
}

fn read_file(
    classifier: &Classifier,
    opts: &TrainCliOptions,
    name: String,
    input: impl BufRead,
) -> anyhow::Result<FileRows> {
    let mut f = FileRows {
        name,
        rows: 0,
        train: Vec::new(),
        held_out: Vec::new(),
    };
    for (n, scored) in scored_lines(input, classifier, &opts.limits) {
        let parsed = scored.and_then(|(r, c)| {
            let (strong, fast) = r.labels()?;
            let mut example = Example::scored(*c.values(), strong, fast, c.input_tokens());
            if let Some(j) = r.judgement {
                example.weight = opts.judged_weight;
                example.hard = Some(j == super::Judgement::Hard);
            }
            Ok((
                r.id_text(),
                Labelled {
                    family: r.family.clone().unwrap_or_else(|| f.name.clone()),
                    example,
                },
            ))
        });
        let (id, row) = parsed.with_context(|| format!("{}: line {n}", f.name))?;
        f.rows += 1;
        if is_held_out(&id) {
            f.held_out.push(row);
        } else {
            f.train.push(row);
        }
    }
    Ok(f)
}

/// A store's rows as training and held-out examples, split by [`is_held_out`] on the request
/// id; rows that are no examples are counted in the report.
fn read_labels(mut report: impl Write, name: String, read: ReadRows) -> anyhow::Result<FileRows> {
    let mut f = FileRows {
        name,
        rows: 0,
        train: Vec::new(),
        held_out: Vec::new(),
    };
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for row in &read.rows {
        match row.example() {
            Ok(example) => {
                f.rows += 1;
                let labelled = Labelled {
                    family: f.name.clone(),
                    example,
                };
                if is_held_out(&row.request_id) {
                    f.held_out.push(labelled);
                } else {
                    f.train.push(labelled);
                }
            }
            Err(e) => *refused.entry(refusal(row, &e)).or_default() += 1,
        }
    }
    writeln!(
        report,
        "labels {}: {} rows, {} training, {} held out; {} torn last lines skipped",
        f.name,
        f.rows,
        f.train.len(),
        f.held_out.len(),
        read.torn
    )?;
    for (why, n) in &refused {
        writeln!(report, "  {n} rows skipped: {why}")?;
    }
    Ok(f)
}

/// How a refused row is reported: by the weights version that routed it and the reason.
fn refusal(row: &LabelRow, e: &prompt_router_core::quality::label::LabelError) -> String {
    format!("{e} (weights {})", row.weights_version)
}

/// What the whole fitting procedure gives.
struct Fit {
    /// The model as fitted, before the stretch.
    fitted: FittedScore,
    /// The stretch applied to it.
    rescale: Rescale,
    /// The stretched model, the one shipped.
    model: FittedScore,
    /// The stored threshold.
    threshold: f64,
}

/// The whole fitting procedure: fit, stretch, threshold.
fn fit_all(rows: &[Example], opts: &TrainOptions) -> anyhow::Result<Fit> {
    let fitted = train::fit(rows, opts)?;
    let rescale = train::spread(&fitted, rows);
    let model = fitted.rescaled(rescale);
    let threshold = choose_threshold(&model, rows, opts)?;
    Ok(Fit {
        fitted,
        rescale,
        model,
        threshold,
    })
}

fn examples(rows: &[Labelled]) -> Vec<Example> {
    rows.iter().map(|r| r.example.clone()).collect()
}

/// Writes what `model` does on `rows` at `threshold`: the APGR comparison where the rows have
/// a quality gap, and the judged rows' tiers and ordering.
fn write_rows(
    mut report: impl Write,
    title: &str,
    model: &FittedScore,
    rows: &[Example],
    threshold: f64,
    prices: &CostAssumptions,
) -> anyhow::Result<Option<eval::Summary>> {
    let scored = score_rows(model, rows);
    let summary = match compare(&scored, threshold, prices) {
        Ok(c) => {
            write_table(&mut report, title, &c)?;
            eval::summarize(&scored, threshold, prices).ok()
        }
        Err(_) => {
            writeln!(report, "{title}: {} rows, no quality gap", rows.len())?;
            None
        }
    };
    let judged: Vec<(f64, bool)> = scored
        .iter()
        .zip(rows)
        .filter_map(|(r, e)| e.hard.map(|h| (r.score, h)))
        .collect();
    if let Some(j) = eval::judged(&judged, threshold) {
        writeln!(
            report,
            "  judged: {} hard → strong {}, {} easy → fast {}, hard above easy {}",
            j.hard,
            percent(j.hard_to_strong),
            j.easy,
            percent(j.easy_to_fast),
            decimal(j.ordering)
        )?;
    }
    Ok(summary)
}

/// A share as a percentage, or "-".
fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", 100.0 * s))
}

/// A figure to four places, or "-".
fn decimal(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"))
}

/// One family's row of the cross-validation table.
fn cv_line(
    family: &str,
    model: &FittedScore,
    rows: &[Example],
    threshold: f64,
    prices: &CostAssumptions,
) -> String {
    let scored = score_rows(model, rows);
    let apgr = |r: &[Row]| {
        eval::summarize(r, threshold, prices)
            .map(|s| format!("{:.4}", s.apgr))
            .unwrap_or_else(|_| "-".to_owned())
    };
    let judged: Vec<(f64, bool)> = scored
        .iter()
        .zip(rows)
        .filter_map(|(r, e)| e.hard.map(|h| (r.score, h)))
        .collect();
    let (hard, easy, order) = eval::judged(&judged, threshold).map_or_else(
        || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        |j| {
            let of = |share: Option<f64>, n: usize| match share {
                Some(_) => format!("{} of {n}", percent(share)),
                None => "-".to_owned(),
            };
            (
                of(j.hard_to_strong, j.hard),
                of(j.easy_to_fast, j.easy),
                decimal(j.ordering),
            )
        },
    );
    let strong = scored.iter().filter(|r| r.score >= threshold).count();
    format!(
        "  {:<14} {:>6} {:>8} {:>8} {:>13} {:>13} {:>11} {:>8.1}%",
        family,
        rows.len(),
        apgr(&scored),
        apgr(&Baseline::Length.rescore(&scored)),
        hard,
        easy,
        order,
        100.0 * strong as f64 / rows.len().max(1) as f64
    )
}

/// Cross-validation by task family (see the module docs).
fn cross_validate(
    mut report: impl Write,
    files: &[FileRows],
    opts: &TrainCliOptions,
) -> anyhow::Result<()> {
    let mut families: BTreeMap<&str, (Vec<Example>, Vec<Example>)> = BTreeMap::new();
    for f in files {
        for (rows, held) in [(&f.train, false), (&f.held_out, true)] {
            for r in rows {
                let entry = families.entry(r.family.as_str()).or_default();
                if held {
                    entry.1.push(r.example.clone());
                } else {
                    entry.0.push(r.example.clone());
                }
            }
        }
    }
    if families.len() < 2 {
        return Ok(());
    }
    writeln!(
        report,
        "cross-validation by task family: fitted without the family's rows, scored on all of them (its training and held-out rows)"
    )?;
    writeln!(
        report,
        "  {:<14} {:>6} {:>8} {:>8} {:>13} {:>13} {:>11} {:>9}",
        "family", "rows", "APGR", "length", "hard→strong", "easy→fast", "hard>easy", "strong"
    )?;
    for (family, (_, _)) in &families {
        let rest: Vec<Example> = families
            .iter()
            .filter(|(f, _)| *f != family)
            .flat_map(|(_, (train, _))| train.iter().cloned())
            .collect();
        let Fit {
            model, threshold, ..
        } = fit_all(&rest, &opts.train)
            .with_context(|| format!("cross-validation without {family}"))?;
        let (train, held) = &families[family];
        let all: Vec<Example> = train.iter().chain(held).cloned().collect();
        writeln!(
            report,
            "{}",
            cv_line(family, &model, &all, threshold, &opts.prices)
        )?;
    }
    Ok(())
}

/// Trains on `inputs` (name, reader) and label stores' rows `labels` (name, rows), writes the
/// weights JSON to `weights_out` and a human-readable report to `report`.
pub fn run<R: BufRead>(
    inputs: Vec<(String, R)>,
    labels: Vec<(String, ReadRows)>,
    opts: &TrainCliOptions,
    mut weights_out: impl Write,
    mut report: impl Write,
) -> anyhow::Result<Weights> {
    if inputs.is_empty() && labels.is_empty() {
        bail!("train needs at least one labelled file or label store");
    }
    if !(opts.judged_weight.is_finite() && opts.judged_weight > 0.0) {
        bail!("--judged-weight must be a positive number");
    }
    let extractor = Classifier::new(Weights::neutral())?;
    let mut files = inputs
        .into_iter()
        .map(|(name, r)| read_file(&extractor, opts, name, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (name, read) in labels {
        files.push(read_labels(&mut report, name, read)?);
    }
    let train_rows: Vec<Example> = files.iter().flat_map(|f| examples(&f.train)).collect();
    let Fit {
        fitted,
        rescale,
        model,
        threshold,
    } = fit_all(&train_rows, &opts.train)?;
    let judged = train_rows.iter().any(|e| e.hard.is_some());
    writeln!(
        report,
        "fitted on {} training rows in {} Newton iterations; length backbone added {:.4} to the ask_tokens \
         weight; logit stretched ×{:.4} around {:.4}; threshold {:.4} = {}",
        train_rows.len(),
        model.iterations,
        fitted.length_boost,
        rescale.factor,
        rescale.centre,
        threshold,
        if judged {
            "the boundary between the judged training rows".to_owned()
        } else {
            format!(
                "CPT({:.0}%) point on the training rows",
                opts.train.target_pgr * 100.0
            )
        }
    )?;
    write_rows(
        &mut report,
        "training rows (in-sample)",
        &model,
        &train_rows,
        threshold,
        &opts.prices,
    )?;
    let mut summaries = Vec::new();
    let mut pooled: Vec<Example> = Vec::new();
    for f in &files {
        let held = examples(&f.held_out);
        let s = write_rows(
            &mut report,
            &format!("held-out {}", f.name),
            &model,
            &held,
            threshold,
            &opts.prices,
        )
        .with_context(|| format!("{}: evaluating held-out rows", f.name))?;
        summaries.push(FileSummary {
            file: f.name.clone(),
            rows: f.rows,
            train_rows: f.train.len(),
            held_out_rows: f.held_out.len(),
            held_out_apgr: s.map_or(0.0, |s| s.apgr),
        });
        pooled.extend(held);
    }
    let pooled_summary = write_rows(
        &mut report,
        "held-out, all files pooled",
        &model,
        &pooled,
        threshold,
        &opts.prices,
    )?;
    if opts.cross_validate {
        cross_validate(&mut report, &files, opts)?;
    }
    let mut order = Feature::ALL;
    order.sort_by(|&a, &b| {
        model.weight[b.index()]
            .abs()
            .total_cmp(&model.weight[a.index()].abs())
    });
    writeln!(
        report,
        "weights (stretched logit per unit of the standardised feature; * = prior, not fitted; 0 = fit broke its prior's sign, fixed at 0):"
    )?;
    for f in order {
        let i = f.index();
        let mark = match (model.prior[i], model.clamped[i]) {
            (true, _) => "*",
            (false, true) => "0",
            (false, false) => " ",
        };
        writeln!(report, "  {:<16}{mark} {:+.4}", f.name(), model.weight[i])?;
    }
    let metadata = Metadata {
        files: summaries,
        held_out_apgr_pooled: pooled_summary.map_or(0.0, |s| s.apgr),
        method: format!(
            "logistic regression on features with fixed centres and scales (train::spec), soft label \
             (1 + strong_score - weak_score) / 2 (a judged row: 1 hard, 0.5 easy, counted {} times), Newton's method; \
             L2 towards {centre}, {} for size and shape features and {} for cue families \
             (train::spec), {bounds}; length backbone share {}; rows with crc32(id) % 5 == 0 \
             (a label row: its request id) held out; then every weight and the bias stretched by one factor around {stretch}, the \
             training 5th-95th percentile scores within [0.05, 0.95] (see `rescale`); threshold = {rule}",
            opts.judged_weight,
            opts.train.l2,
            opts.train.cue_l2,
            opts.train.length_share,
            centre = match (opts.train.priors, &opts.prior_name) {
                (false, _) => "0".to_owned(),
                (true, None) => "documented prior weights (train::spec)".to_owned(),
                (true, Some(name)) =>
                    format!("the weights of {name}, unstretched (train::prior_of)"),
            },
            bounds = if opts.train.priors {
                "prior signs as bounds"
            } else {
                "no sign bounds (--no-priors)"
            },
            stretch = if judged {
                "the boundary between judged hard and easy training rows (score 0.5)"
            } else {
                "the median training prompt (score 0.5)"
            },
            rule = if judged {
                "that boundary".to_owned()
            } else {
                format!(
                    "CPT({}) point on the pooled training rows",
                    opts.train.target_pgr
                )
            },
        ),
        rescale: Some(rescale),
    };
    let weights = model.to_weights(threshold, metadata);
    weights_out.write_all(weights.to_json()?.as_bytes())?;
    weights_out.flush()?;
    report.flush()?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(n: usize) -> String {
        (0..n)
            .map(|i| {
                let hard = i % 3 == 0;
                let prompt = if hard {
                    format!("Prove step by step why lemma {i} implies the theorem, and derive the bound.")
                } else {
                    format!("hi {i}")
                };
                format!(
                    "{{\"id\":\"r{i}\",\"prompt\":\"{prompt}\",\"strong_score\":1,\"weak_score\":{}}}\n",
                    if hard && i % 2 == 0 { 0 } else { 1 }
                )
            })
            .collect()
    }

    #[test]
    fn trains_and_writes_loadable_weights() {
        let data = labelled(300);
        let opts = TrainCliOptions {
            train: TrainOptions::default(),
            judged_weight: 10.0,
            cross_validate: true,
            prices: CostAssumptions::default(),
            limits: Limits::default(),
            prior_name: None,
        };
        let mut wout = Vec::new();
        let mut report = Vec::new();
        let w = run(
            vec![("toy.jsonl".to_owned(), data.as_bytes())],
            Vec::new(),
            &opts,
            &mut wout,
            &mut report,
        )
        .unwrap();
        let loaded = Weights::from_json(std::str::from_utf8(&wout).unwrap()).unwrap();
        assert_eq!(loaded, w);
        assert_eq!(w.metadata.files[0].rows, 300);
        let c = Classifier::new(loaded).unwrap();
        assert!(
            c.classify_prompt(
                "Prove step by step why lemma 7 implies the theorem, and derive the bound."
            )
            .score()
                > c.classify_prompt("hi 8").score()
        );
        let text = String::from_utf8(report).unwrap();
        assert!(text.contains("held-out toy.jsonl"));
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let opts = TrainCliOptions {
            train: TrainOptions::default(),
            judged_weight: 10.0,
            cross_validate: true,
            prices: CostAssumptions::default(),
            limits: Limits::default(),
            prior_name: None,
        };
        let err = run(
            vec![("x.jsonl".to_owned(), "{\"prompt\":\"a\"}\n".as_bytes())],
            Vec::new(),
            &opts,
            Vec::new(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("x.jsonl: line 1"));
    }
}
