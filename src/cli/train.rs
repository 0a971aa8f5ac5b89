//! `train FILE...`: fits the classifier on labelled JSON lines, reports held-out results per
//! file and pooled, and writes the weights file.
//!
//! Split: a row is held out iff `crc32(id) % 5 == 0` ([`is_held_out`]); the weights are fitted
//! on the other rows of every file pooled (each row counts once), the logit is stretched
//! ([`train::spread`]), and the stored threshold is chosen on the pooled training rows
//! ([`choose_threshold`]). Every input line must parse: a bad line stops the run with its file
//! and line number.

use std::io::{BufRead, Write};

use anyhow::{Context as _, bail};

use super::eval::{compare, write_table};
use super::scored_lines;
use crate::classify::{Classifier, FEATURE_NAMES, FileSummary, Metadata, Weights};
use crate::eval::{Prices, Row};
use crate::request::Limits;
use crate::train::{self, Example, TrainOptions, choose_threshold, is_held_out, score_rows};

/// Options for `train`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainCliOptions {
    /// Model fitting settings.
    pub train: TrainOptions,
    /// Prices for the cost figures in the report.
    pub prices: Prices,
    /// Request limits the lines are validated against, as the server's.
    pub limits: Limits,
}

struct FileRows {
    name: String,
    rows: usize,
    train: Vec<Example>,
    held_out: Vec<Example>,
}

fn read_file(
    classifier: &Classifier,
    limits: &Limits,
    name: String,
    input: impl BufRead,
) -> anyhow::Result<FileRows> {
    let mut f = FileRows {
        name,
        rows: 0,
        train: Vec::new(),
        held_out: Vec::new(),
    };
    for (n, scored) in scored_lines(input, classifier, limits) {
        let parsed = scored.and_then(|(r, c)| {
            let (strong, weak) = r.labels()?;
            Ok((
                r.id_text(),
                Example {
                    features: *c.values(),
                    strong,
                    weak,
                    input_tokens: c.input_tokens(),
                },
            ))
        });
        let (id, example) = parsed.with_context(|| format!("{}: line {n}", f.name))?;
        f.rows += 1;
        if is_held_out(&id) {
            f.held_out.push(example);
        } else {
            f.train.push(example);
        }
    }
    Ok(f)
}

/// Trains on `inputs` (name, reader), writes the weights JSON to `weights_out` and a
/// human-readable report to `report`.
pub fn run<R: BufRead>(
    inputs: Vec<(String, R)>,
    opts: &TrainCliOptions,
    mut weights_out: impl Write,
    mut report: impl Write,
) -> anyhow::Result<Weights> {
    if inputs.is_empty() {
        bail!("train needs at least one labelled file");
    }
    let extractor = Classifier::new(Weights::neutral())?;
    let files = inputs
        .into_iter()
        .map(|(name, r)| read_file(&extractor, &opts.limits, name, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let train_rows: Vec<Example> = files.iter().flat_map(|f| f.train.iter().cloned()).collect();
    let fitted = train::fit(&train_rows, &opts.train)?;
    let rescale = train::spread(&fitted, &train_rows);
    let model = fitted.rescaled(rescale);
    let threshold = choose_threshold(&model, &train_rows, &opts.train)?;
    writeln!(
        report,
        "fitted on {} training rows in {} Newton iterations; length backbone added {:.4} to the tokens \
         weight; logit stretched ×{:.4} around {:.4} (median training prompt → 0.5); threshold {:.4} = \
         CPT({:.0}%) point on the training rows",
        train_rows.len(),
        model.iterations,
        fitted.length_boost,
        rescale.factor,
        rescale.centre,
        threshold,
        opts.train.target_pgr * 100.0
    )?;
    let train_cmp = compare(&score_rows(&model, &train_rows), threshold, &opts.prices)?;
    write_table(&mut report, "training rows (in-sample)", &train_cmp)?;
    let mut summaries = Vec::new();
    let mut pooled: Vec<Row> = Vec::new();
    for f in &files {
        let rows = score_rows(&model, &f.held_out);
        let c = compare(&rows, threshold, &opts.prices)
            .with_context(|| format!("{}: evaluating held-out rows", f.name))?;
        write_table(&mut report, &format!("held-out {}", f.name), &c)?;
        summaries.push(FileSummary {
            file: f.name.clone(),
            rows: f.rows,
            train_rows: f.train.len(),
            held_out_rows: f.held_out.len(),
            held_out_apgr: c.classifier.apgr,
        });
        pooled.extend(rows);
    }
    let pooled_cmp = compare(&pooled, threshold, &opts.prices)?;
    write_table(&mut report, "held-out, all files pooled", &pooled_cmp)?;
    let mut order: Vec<usize> = (0..FEATURE_NAMES.len()).collect();
    order.sort_by(|&a, &b| model.weight[b].abs().total_cmp(&model.weight[a].abs()));
    writeln!(
        report,
        "weights (stretched logit per standard deviation; * = prior, not fitted; 0 = fit broke its prior's sign, fixed at 0):"
    )?;
    for i in order {
        let mark = match (model.prior[i], model.clamped[i]) {
            (true, _) => "*",
            (false, true) => "0",
            (false, false) => " ",
        };
        writeln!(
            report,
            "  {:<16}{mark} {:+.4}",
            FEATURE_NAMES[i], model.weight[i]
        )?;
    }
    let metadata = Metadata {
        files: summaries,
        held_out_apgr_pooled: pooled_cmp.classifier.apgr,
        method: format!(
            "logistic regression on standardised features, soft label (1 + strong - weak) / 2, \
             Newton's method; L2 towards {centre}, {} for size and shape features and {} for cue \
             families (train::CUE_FAMILIES), {bounds}; length backbone: \
             tokens weight raised so the length term carries {} of the logit's standard deviation on the \
             training rows; rows with crc32(id) % 5 == 0 held out; \
             then every weight and the bias stretched by one factor so that the median training prompt scores 0.5 \
             and the training 5th-95th percentile scores fit in [0.05, 0.95] (see `rescale`); \
             threshold = CPT({}) point on the pooled training rows, after the stretch",
            opts.train.l2,
            opts.train.cue_l2,
            opts.train.length_share,
            opts.train.target_pgr,
            centre = if opts.train.priors {
                "documented prior weights (train::PRIORS)"
            } else {
                "0"
            },
            bounds = if opts.train.priors {
                "prior signs as bounds"
            } else {
                "no sign bounds (--no-priors)"
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
            prices: Prices::default(),
            limits: Limits::default(),
        };
        let mut wout = Vec::new();
        let mut report = Vec::new();
        let w = run(
            vec![("toy.jsonl".to_owned(), data.as_bytes())],
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
            prices: Prices::default(),
            limits: Limits::default(),
        };
        let err = run(
            vec![("x.jsonl".to_owned(), "{\"prompt\":\"a\"}\n".as_bytes())],
            &opts,
            Vec::new(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("x.jsonl: line 1"));
    }
}
