//! Router evaluation. PURE: metrics over (score, strong_score, weak_score, input tokens) rows.
//!
//! Definitions (RouteLLM, Ong et al. 2024), as `eval` prints them:
//! - **Sweep**: sort prompts by score, descending. A threshold `t` sends prompts with
//!   `score ≥ t` to the strong model. Every distinct score is one step, so prompts with equal
//!   scores move together (a constant-score router has only the points 0% and 100%). The
//!   sweep starts at strong share 0 (threshold just above the top score).
//! - At each point: strong share `s = #strong / n`; performance = mean over prompts of
//!   `strong_score` if routed strong else `weak_score`;
//!   `PGR = (perf − perf_all_weak) / (perf_all_strong − perf_all_weak)`.
//! - **APGR**: area under PGR(s) for s ∈ [0, 1], trapezoids between consecutive sweep points.
//!   A random router scores ≈ 0.5.
//! - **CPT(x)**: the smallest strong share among sweep points with `PGR ≥ x` (no interpolation).
//! - **At a threshold**: strong share, PGR ("quality gap recovered") and cost saved against
//!   sending everything to strong: `1 − cost(routed) / cost(all strong)`, where a prompt's cost
//!   on a model is `input price × estimated input tokens + output price × assumed output tokens`
//!   ([`CostAssumptions`]; the output length is an assumption because it is unknown before the call).
//!   The same figures **at given decisions** ([`at_decisions`]) measure a router whose
//!   threshold moves from row to row (a target strong share replayed in file order).
//!
//! Against RouteLLM's published evaluation code (`routellm/evals/evaluate.py`): PGR, the
//! strong-call share and APGR as a trapezoid area are the same; that code samples the curve at
//! ten score quantiles and interpolates CPT linearly between them, while here every distinct
//! score is a point (the exact curve of the router) and CPT is the first sweep point that
//! reaches the target, with no interpolation, so a CPT here is one the router can actually
//! be set to. The prices come from the config's model catalog (`eval`, `train`).

/// Why metrics could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// No rows.
    #[error("no rows to evaluate")]
    Empty,
    /// Strong and fast models perform the same on these rows, so PGR is undefined.
    #[error("the strong and fast models score the same on these rows; PGR is undefined")]
    NoGap,
    /// A score or label that is not a finite number.
    #[error("row {0} has a non-finite score or label")]
    NotFinite(usize),
}

/// One evaluated prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Router score; higher goes to strong first.
    pub score: f64,
    /// Quality of the strong model's answer.
    pub strong: f64,
    /// Quality of the fast model's answer.
    pub fast: f64,
    /// Estimated input tokens.
    pub input_tokens: f64,
}

/// What an offline "cost saved" estimate assumes: both tiers' list prices in USD per million
/// tokens, and an output length per prompt (unknown before the call). The router's own exact
/// accounting of a call is [`crate::cost`] ([`crate::cost::Prices`]: one model, nano-dollars
/// per token, real token counts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostAssumptions {
    /// Strong model input price.
    pub strong_input: f64,
    /// Strong model output price.
    pub strong_output: f64,
    /// Fast model input price.
    pub fast_input: f64,
    /// Fast model output price.
    pub fast_output: f64,
    /// Output tokens assumed for every prompt.
    pub output_tokens: f64,
}

impl Default for CostAssumptions {
    /// Claude 3.5 Sonnet v2 ($3 / $15) vs Claude 3 Haiku ($0.25 / $1.25), 256 output tokens.
    fn default() -> Self {
        Self {
            strong_input: 3.0,
            strong_output: 15.0,
            fast_input: 0.25,
            fast_output: 1.25,
            output_tokens: 256.0,
        }
    }
}

impl CostAssumptions {
    fn strong_cost(&self, input_tokens: f64) -> f64 {
        self.strong_input * input_tokens + self.strong_output * self.output_tokens
    }

    fn fast_cost(&self, input_tokens: f64) -> f64 {
        self.fast_input * input_tokens + self.fast_output * self.output_tokens
    }
}

/// One point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Threshold that produces this point (`score ≥ threshold` goes strong).
    pub threshold: f64,
    /// Share of prompts sent to strong.
    pub strong_share: f64,
    /// Performance gap recovered.
    pub pgr: f64,
}

fn check(rows: &[Row]) -> Result<f64, EvalError> {
    if rows.is_empty() {
        return Err(EvalError::Empty);
    }
    let mut gap = 0.0;
    for (i, r) in rows.iter().enumerate() {
        if !(r.score.is_finite() && r.strong.is_finite() && r.fast.is_finite()) {
            return Err(EvalError::NotFinite(i));
        }
        gap += r.strong - r.fast;
    }
    if gap.abs() < 1e-12 {
        return Err(EvalError::NoGap);
    }
    Ok(gap)
}

/// The sweep over every distinct score, from share 0 to share 1.
pub fn sweep(rows: &[Row]) -> Result<Vec<Point>, EvalError> {
    let gap = check(rows)?;
    let mut order: Vec<&Row> = rows.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let n = rows.len() as f64;
    let mut points = Vec::with_capacity(rows.len() + 1);
    points.push(Point {
        threshold: order[0].score.next_up(),
        strong_share: 0.0,
        pgr: 0.0,
    });
    let mut gained = 0.0;
    let mut i = 0;
    while i < order.len() {
        let t = order[i].score;
        while i < order.len() && order[i].score == t {
            gained += order[i].strong - order[i].fast;
            i += 1;
        }
        points.push(Point {
            threshold: t,
            strong_share: i as f64 / n,
            pgr: gained / gap,
        });
    }
    Ok(points)
}

/// Area under PGR(strong share), trapezoid rule between sweep points.
pub fn apgr(points: &[Point]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].strong_share - w[0].strong_share) * (w[0].pgr + w[1].pgr) / 2.0)
        .sum()
}

/// CPT(x): the smallest strong share among sweep points with PGR ≥ x, if any.
pub fn cpt(points: &[Point], x: f64) -> Option<f64> {
    cpt_point(points, x).map(|p| p.strong_share)
}

/// The sweep point where [`cpt`] is reached: the lowest strong share whose PGR is at least `x`.
pub fn cpt_point(points: &[Point], x: f64) -> Option<&Point> {
    points
        .iter()
        .filter(|p| p.pgr >= x)
        .min_by(|a, b| a.strong_share.total_cmp(&b.strong_share))
}

/// Routing results at one threshold, or at given decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Operating {
    /// The threshold; `None` when the decisions were given row by row.
    pub threshold: Option<f64>,
    /// Share of prompts sent to strong.
    pub strong_share: f64,
    /// Quality gap recovered.
    pub pgr: f64,
    /// `1 − cost(routed) / cost(all strong)`.
    pub cost_saved: f64,
}

/// Strong share, PGR and cost saved when `score ≥ threshold` goes to strong.
pub fn at_threshold(
    rows: &[Row],
    threshold: f64,
    prices: &CostAssumptions,
) -> Result<Operating, EvalError> {
    let strong: Vec<bool> = rows.iter().map(|r| r.score >= threshold).collect();
    Ok(Operating {
        threshold: Some(threshold),
        ..at_decisions(rows, &strong, prices)?
    })
}

/// Strong share, PGR and cost saved when the rows marked in `strong` (one flag per row) go to
/// strong.
pub fn at_decisions(
    rows: &[Row],
    strong: &[bool],
    prices: &CostAssumptions,
) -> Result<Operating, EvalError> {
    let gap = check(rows)?;
    let (mut strong_n, mut gained, mut routed, mut all_strong) = (0usize, 0.0, 0.0, 0.0);
    for (r, &to_strong) in rows.iter().zip(strong) {
        let s = prices.strong_cost(r.input_tokens);
        all_strong += s;
        if to_strong {
            strong_n += 1;
            gained += r.strong - r.fast;
            routed += s;
        } else {
            routed += prices.fast_cost(r.input_tokens);
        }
    }
    Ok(Operating {
        threshold: None,
        strong_share: strong_n as f64 / rows.len() as f64,
        pgr: gained / gap,
        cost_saved: if all_strong > 0.0 {
            1.0 - routed / all_strong
        } else {
            0.0
        },
    })
}

/// Everything `eval` prints for one router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Rows evaluated.
    pub rows: usize,
    /// Area under the PGR curve.
    pub apgr: f64,
    /// CPT(50%).
    pub cpt50: Option<f64>,
    /// CPT(80%).
    pub cpt80: Option<f64>,
    /// Results at the operating threshold.
    pub operating: Operating,
}

/// APGR, CPT(50%), CPT(80%) and the results at `threshold`.
pub fn summarize(
    rows: &[Row],
    threshold: f64,
    prices: &CostAssumptions,
) -> Result<Summary, EvalError> {
    summarize_at(rows, at_threshold(rows, threshold, prices)?)
}

/// APGR, CPT(50%), CPT(80%) of the rows' scores, and `operating` as the operating point.
pub fn summarize_at(rows: &[Row], operating: Operating) -> Result<Summary, EvalError> {
    let points = sweep(rows)?;
    Ok(Summary {
        rows: rows.len(),
        apgr: apgr(&points),
        cpt50: cpt(&points, 0.5),
        cpt80: cpt(&points, 0.8),
        operating,
    })
}

/// How a router treats written judgements (`easy`: the fast model serves as well, `hard`: the
/// strong one is needed), at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct JudgedSummary {
    /// Rows judged hard.
    pub hard: usize,
    /// Rows judged easy.
    pub easy: usize,
    /// Share of hard rows with `score ≥ threshold` (sent strong); `None` without hard rows.
    pub hard_to_strong: Option<f64>,
    /// Share of easy rows with `score < threshold` (sent fast); `None` without easy rows.
    pub easy_to_fast: Option<f64>,
    /// Share of (hard, easy) pairs where the hard row scores higher, ties counting half;
    /// `None` unless both kinds are present.
    pub ordering: Option<f64>,
}

/// [`JudgedSummary`] of `(score, judged hard)` rows at `threshold`; `None` without rows.
pub fn judged(rows: &[(f64, bool)], threshold: f64) -> Option<JudgedSummary> {
    if rows.is_empty() {
        return None;
    }
    let hard: Vec<f64> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
    let mut easy: Vec<f64> = rows.iter().filter(|r| !r.1).map(|r| r.0).collect();
    easy.sort_by(f64::total_cmp);
    // Each hard score beats the easy scores below it and ties with the equal ones.
    let wins: f64 = hard
        .iter()
        .map(|&h| {
            let below = easy.partition_point(|&e| e < h);
            let equal = easy[below..].partition_point(|&e| e <= h);
            below as f64 + equal as f64 / 2.0
        })
        .sum();
    let share = |v: &[f64], f: &dyn Fn(f64) -> bool| {
        (!v.is_empty()).then(|| v.iter().filter(|&&x| f(x)).count() as f64 / v.len() as f64)
    };
    Some(JudgedSummary {
        hard: hard.len(),
        easy: easy.len(),
        hard_to_strong: share(&hard, &|x| x >= threshold),
        easy_to_fast: share(&easy, &|x| x < threshold),
        ordering: (!hard.is_empty() && !easy.is_empty())
            .then(|| wins / (hard.len() * easy.len()) as f64),
    })
}

/// Seed of the random baseline router.
pub const RANDOM_SEED: u64 = 42;

/// Deterministic pseudo-random scores in [0, 1), one per row: the random router (fastrand
/// seeded with `seed`, so a run is repeatable for a given fastrand release).
pub fn random_scores(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f64()).collect()
}

/// The same rows rescored by a baseline: `Length` scores by estimated input tokens, `Random`
/// by [`random_scores`] with [`RANDOM_SEED`] (a fixed-seed run, not an expectation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Longer prompts go to strong first.
    Length,
    /// A fixed-seed random order.
    Random,
}

impl Baseline {
    /// The rows with this baseline's scores.
    pub fn rescore(self, rows: &[Row]) -> Vec<Row> {
        match self {
            Baseline::Length => rows
                .iter()
                .map(|r| Row {
                    score: r.input_tokens,
                    ..*r
                })
                .collect(),
            Baseline::Random => rows
                .iter()
                .zip(random_scores(rows.len(), RANDOM_SEED))
                .map(|(r, s)| Row { score: s, ..*r })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(score: f64, strong: f64, fast: f64) -> Row {
        Row {
            score,
            strong,
            fast,
            input_tokens: 100.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn judged_shares_and_ordering() {
        let rows = [
            (0.9, true),
            (0.4, true),
            (0.4, false),
            (0.1, false),
            (0.6, false),
        ];
        let j = judged(&rows, 0.5).unwrap();
        assert_eq!((j.hard, j.easy), (2, 3));
        assert!(close(j.hard_to_strong.unwrap(), 0.5));
        assert!(close(j.easy_to_fast.unwrap(), 2.0 / 3.0));
        // 0.9 beats all three easy; 0.4 beats 0.1, ties 0.4, loses to 0.6.
        assert!(close(j.ordering.unwrap(), (3.0 + 1.5) / 6.0));
        // One kind only: its share, no ordering.
        let j = judged(&[(0.3, true)], 0.5).unwrap();
        assert_eq!(
            (j.hard_to_strong, j.easy_to_fast, j.ordering),
            (Some(0.0), None, None)
        );
        assert!(judged(&[], 0.5).is_none());
    }

    #[test]
    fn sweep_without_ties() {
        // Gains in score order: +1, 0, +1, 0 → total gap 2.
        let rows = [
            row(0.9, 1.0, 0.0),
            row(0.7, 1.0, 1.0),
            row(0.5, 1.0, 0.0),
            row(0.1, 0.0, 0.0),
        ];
        let p = sweep(&rows).unwrap();
        let shares: Vec<f64> = p.iter().map(|p| p.strong_share).collect();
        let pgrs: Vec<f64> = p.iter().map(|p| p.pgr).collect();
        assert_eq!(shares, [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(pgrs, [0.0, 0.5, 0.5, 1.0, 1.0]);
        // Trapezoids: .25·(0+.5)/2 + .25·(.5+.5)/2 + .25·(.5+1)/2 + .25·(1+1)/2
        //           = .0625 + .125 + .1875 + .25 = 0.625.
        assert!(close(apgr(&p), 0.625));
        assert_eq!(cpt(&p, 0.5), Some(0.25));
        assert_eq!(cpt(&p, 0.8), Some(0.75));
    }

    #[test]
    fn ties_move_together() {
        // The two 0.5s form one step: shares 0, .25, .75, 1 and PGR 0, 0, 1, 1 with gains
        // 0 | +1, +1 | 0 (gap 2).
        let rows = [
            row(0.9, 1.0, 1.0),
            row(0.5, 1.0, 0.0),
            row(0.5, 1.0, 0.0),
            row(0.1, 0.0, 0.0),
        ];
        let p = sweep(&rows).unwrap();
        let shares: Vec<f64> = p.iter().map(|p| p.strong_share).collect();
        assert_eq!(shares, [0.0, 0.25, 0.75, 1.0]);
        // .25·0 + .5·(0+1)/2 + .25·(1+1)/2 = 0.5.
        assert!(close(apgr(&p), 0.5));
        assert_eq!(cpt(&p, 0.5), Some(0.75));
        assert_eq!(p[2].threshold, 0.5);
    }

    #[test]
    fn constant_router_has_two_points() {
        let rows = [
            row(0.3, 1.0, 0.0),
            row(0.3, 1.0, 1.0),
            row(0.3, 0.0, 1.0),
            row(0.3, 1.0, 0.0),
        ];
        let p = sweep(&rows).unwrap();
        assert_eq!(p.len(), 2);
        assert!(close(apgr(&p), 0.5));
        assert_eq!(cpt(&p, 0.8), Some(1.0));
    }

    #[test]
    fn pgr_can_exceed_one_and_go_negative() {
        // The fast model wins the top-scored prompt: PGR dips below 0 first; gap 1.
        let rows = [row(0.9, 0.0, 1.0), row(0.8, 1.0, 0.0), row(0.7, 1.0, 0.0)];
        let p = sweep(&rows).unwrap();
        let pgrs: Vec<f64> = p.iter().map(|p| p.pgr).collect();
        assert_eq!(pgrs, [0.0, -1.0, 0.0, 1.0]);
        // (1/3)·(0−1)/2 + (1/3)·(−1+0)/2 + (1/3)·(0+1)/2 = −1/6.
        assert!(close(apgr(&p), -1.0 / 6.0));
    }

    #[test]
    fn operating_point_and_cost() {
        let rows = [
            Row {
                score: 0.9,
                strong: 1.0,
                fast: 0.0,
                input_tokens: 1000.0,
            },
            Row {
                score: 0.2,
                strong: 1.0,
                fast: 1.0,
                input_tokens: 1000.0,
            },
        ];
        let prices = CostAssumptions {
            strong_input: 3.0,
            strong_output: 15.0,
            fast_input: 0.25,
            fast_output: 1.25,
            output_tokens: 100.0,
        };
        let op = at_threshold(&rows, 0.5, &prices).unwrap();
        assert_eq!(op.strong_share, 0.5);
        assert_eq!(op.pgr, 1.0);
        // strong: 3000 + 1500 = 4500 each; fast: 250 + 125 = 375.
        // routed 4500 + 375 = 4875 of 9000 → saved 4125 / 9000.
        assert!(close(op.cost_saved, 4125.0 / 9000.0));
        // A threshold equal to a score sends it to strong.
        assert_eq!(at_threshold(&rows, 0.2, &prices).unwrap().strong_share, 1.0);
    }

    #[test]
    fn soft_labels_and_a_tie_at_the_top() {
        // Gains by row: +0.5, +0.5 (tied at 0.8), −0.5, +1 → gap 1.5. The tie is one step:
        // shares 0, 0.5, 0.75, 1; PGR 0, 1/1.5, 0.5/1.5, 1.
        let rows = [
            row(0.8, 1.0, 0.5),
            row(0.8, 0.5, 0.0),
            row(0.6, 0.0, 0.5),
            row(0.2, 1.0, 0.0),
        ];
        let p = sweep(&rows).unwrap();
        let shares: Vec<f64> = p.iter().map(|p| p.strong_share).collect();
        assert_eq!(shares, [0.0, 0.5, 0.75, 1.0]);
        let pgrs: Vec<f64> = p.iter().map(|p| p.pgr).collect();
        for (got, want) in pgrs.iter().zip([0.0, 2.0 / 3.0, 1.0 / 3.0, 1.0]) {
            assert!(close(*got, want), "{pgrs:?}");
        }
        // .5·(0 + 2/3)/2 + .25·(2/3 + 1/3)/2 + .25·(1/3 + 1)/2 = 1/6 + 1/8 + 1/6 = 11/24.
        assert!(close(apgr(&p), 11.0 / 24.0));
        // PGR 2/3 is first reached by the whole tie, never by half of it (no interpolation).
        assert_eq!(cpt(&p, 0.5), Some(0.5));
        assert_eq!(cpt(&p, 0.8), Some(1.0));
        // Beyond every point's PGR: unreachable.
        assert_eq!(cpt(&p, 1.01), None);
    }

    #[test]
    fn cpt_takes_the_first_crossing_when_pgr_overshoots() {
        // Gains +1, +1, −1, 0 → gap 1; PGR 0, 1, 2, 1, 1: CPT(80%) at share .25, even though
        // PGR later falls back.
        let rows = [
            row(0.9, 1.0, 0.0),
            row(0.8, 1.0, 0.0),
            row(0.7, 0.0, 1.0),
            row(0.1, 1.0, 1.0),
        ];
        let p = sweep(&rows).unwrap();
        let pgrs: Vec<f64> = p.iter().map(|p| p.pgr).collect();
        assert_eq!(pgrs, [0.0, 1.0, 2.0, 1.0, 1.0]);
        assert_eq!(cpt(&p, 0.8), Some(0.25));
        assert_eq!(cpt(&p, 1.5), Some(0.5));
        // .25·(0+1)/2 + .25·(1+2)/2 + .25·(2+1)/2 + .25·(1+1)/2 = .125 + .375 + .375 + .25.
        assert!(close(apgr(&p), 1.125));
    }

    #[test]
    fn operating_point_matches_the_sweep_and_moves_ties_together() {
        let rows = [
            row(0.9, 1.0, 1.0),
            row(0.5, 1.0, 0.0),
            row(0.5, 1.0, 0.0),
            row(0.1, 0.0, 0.0),
        ];
        let prices = CostAssumptions::default();
        for p in sweep(&rows).unwrap() {
            let op = at_threshold(&rows, p.threshold, &prices).unwrap();
            assert_eq!(op.strong_share, p.strong_share);
            assert!(close(op.pgr, p.pgr));
        }
        // Between 0.5 and 0.9: only the top row; at 0.5 both tied rows join it.
        assert_eq!(
            at_threshold(&rows, 0.6, &prices).unwrap().strong_share,
            0.25
        );
        assert_eq!(
            at_threshold(&rows, 0.5, &prices).unwrap().strong_share,
            0.75
        );
    }

    #[test]
    fn given_decisions_are_measured_like_a_threshold() {
        let rows = [
            row(0.9, 1.0, 0.0),
            row(0.5, 1.0, 1.0),
            row(0.4, 1.0, 0.0),
            row(0.1, 0.0, 0.0),
        ];
        let prices = CostAssumptions::default();
        let at = at_threshold(&rows, 0.45, &prices).unwrap();
        let given = at_decisions(&rows, &[true, true, false, false], &prices).unwrap();
        assert_eq!(at.threshold, Some(0.45));
        assert_eq!(
            Operating {
                threshold: None,
                ..at
            },
            given
        );
        // Decisions a single threshold cannot make: the 0.4 row strong, the 0.5 row fast.
        let moving = at_decisions(&rows, &[true, false, true, false], &prices).unwrap();
        assert_eq!((moving.strong_share, moving.pgr), (0.5, 1.0));
    }

    #[test]
    fn cost_saved_weighs_prompts_by_their_size() {
        // Strong costs 3·t + 15·10, fast 0.25·t + 1.25·10 (per million tokens; units cancel).
        let prices = CostAssumptions {
            strong_input: 3.0,
            strong_output: 15.0,
            fast_input: 0.25,
            fast_output: 1.25,
            output_tokens: 10.0,
        };
        let r = |score, input_tokens| Row {
            score,
            strong: 1.0,
            fast: 0.0,
            input_tokens,
        };
        // Long prompt strong (3·1000 + 150 = 3150), short prompt fast (0.25·100 + 12.5 = 37.5);
        // all strong: 3150 + (300 + 150) = 3600. Saved 1 − 3187.5 / 3600.
        let rows = [r(0.9, 1000.0), r(0.1, 100.0)];
        let op = at_threshold(&rows, 0.5, &prices).unwrap();
        assert!(close(op.cost_saved, 1.0 - 3187.5 / 3600.0));
        // The other way round saves more: fast 0.25·1000 + 12.5 = 262.5, strong 450.
        let rows = [r(0.1, 1000.0), r(0.9, 100.0)];
        let op = at_threshold(&rows, 0.5, &prices).unwrap();
        assert!(close(op.cost_saved, 1.0 - 712.5 / 3600.0));
        // Everything fast saves 1 − 1/12 with these prices.
        let op = at_threshold(&rows, 2.0, &prices).unwrap();
        assert!(close(op.cost_saved, 11.0 / 12.0));
        assert_eq!(op.strong_share, 0.0);
    }

    #[test]
    fn errors() {
        assert_eq!(sweep(&[]), Err(EvalError::Empty));
        assert_eq!(sweep(&[row(0.5, 1.0, 1.0)]), Err(EvalError::NoGap));
        assert_eq!(
            sweep(&[row(f64::NAN, 1.0, 0.0)]),
            Err(EvalError::NotFinite(0))
        );
    }

    #[test]
    fn random_scores_are_deterministic_and_in_range() {
        let a = random_scores(1000, 7);
        assert_eq!(a, random_scores(1000, 7));
        assert!(a.iter().all(|s| (0.0..1.0).contains(s)));
        assert_ne!(a, random_scores(1000, 8));
    }

    #[test]
    fn length_baseline_scores_by_tokens() {
        let rows = [
            Row {
                score: 0.0,
                strong: 1.0,
                fast: 0.0,
                input_tokens: 50.0,
            },
            Row {
                score: 0.0,
                strong: 1.0,
                fast: 1.0,
                input_tokens: 10.0,
            },
        ];
        let l = Baseline::Length.rescore(&rows);
        assert_eq!(l[0].score, 50.0);
        let p = sweep(&l).unwrap();
        assert!(close(apgr(&p), 0.5 * 0.5 + 0.5 * 1.0));
    }
}
