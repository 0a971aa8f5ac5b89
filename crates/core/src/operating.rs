//! PURE. The operating point: which threshold a caller's scores are compared with.
//!
//! - **Fixed** (the default): one threshold for every caller (`routing.threshold`, else the
//!   weights file's), so a score means the same on any traffic.
//! - **Target strong share** (`routing.target_strong_share`, per caller
//!   `[callers.NAME] target_strong_share`): the threshold follows the (1 − s) quantile of the
//!   caller's recent scores, so a known share s of its AUTO requests goes strong whatever its
//!   traffic looks like.
//!
//! **Window.** Each target-share caller has a window: a ring of the scores of its last
//! `routing.share_window` score-decided requests (forced and capability-bound requests never
//! look at the threshold, so they do not enter), quantised to 1,024 bins, and a histogram of
//! the ring kept up to date on every push (the oldest score leaves its bin, the new one enters).
//! A cursor on the bin that holds the quantile moves with the pushes, usually by a bin or
//! none (a walk over many bins only when the feedback moves the target far), so the threshold
//! is recomputed after every request at O(1) amortised cost and no allocation: there is no
//! recompute interval to tune and no stale threshold between recomputes. Inside the bin the
//! threshold is interpolated as if its scores were spread evenly.
//!
//! Why not a quantile sketch (t-digest, DDSketch, GK, KLL): they summarise everything ever
//! added and have no deletion, so they cannot forget old traffic without rotating several
//! sketches, and they trade exactness for unbounded streams we do not have. The ring is exact
//! over the sliding window (up to the bin width, 1/1024), bounded (2 bytes per score plus
//! 2 KiB of bins: about 4.1 KB per caller at the default window of 1000) and O(1) per request.
//! The one maintained sliding-window crate found (`sliding-quantile` 0.1, partitioning heaps:
//! exact, O(log n) per push, 24 bytes per score) fixes the quantile's probability when it is
//! built, while the share feedback below moves it on every request.
//!
//! **Share feedback.** A pure quantile lets the realised share wander: sampling noise, ties
//! that cannot be split, and drift when the stream is ordered (sorted by difficulty, a batch job
//! working through its input). So the quantile is aimed at
//! `s_eff = clamp(s + (s·n − strong_n) / H, 0, 1)`, where n and strong_n count the window's
//! decisions taken at the target-share point and H = [`HORIZON`] requests: a deficit or excess
//! of strong requests is repaid over about H requests, so the share over any stretch longer
//! than a few H tracks the target. Decisions record `score ≥ threshold in force`, before the
//! request's `qualityBias`, so a caller's bias still moves its requests on top of the target.
//!
//! **Warm-up.** Until a caller's window holds `routing.share_warmup` scores its threshold is the
//! (1 − s) quantile of the pooled window of every target-share caller's scores, if that holds
//! enough, else the fixed threshold. Warm-up decisions are not counted by the feedback: they
//! were not the controller's.
//!
//! **Changing the share at run time** ([`OperatingPoints::set_share`], for
//! `routing.target_quality`): the window's scores stay, since the traffic has not changed, but
//! its decisions stop counting for the feedback, since they were aimed at the old share; the
//! new share's deficit starts from zero, so the threshold moves to the new quantile at once
//! instead of repaying the old share's decisions.
//!
//! **Bounded state.** Callers are looked up in a table built once from the config; a caller not
//! named there shares the `default` window, so a client cannot create state by inventing names.

use std::sync::{
    Mutex, MutexGuard, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

/// Bins of a window's histogram: scores are kept to 1/1024, finer than any routing decision
/// needs and small enough that a walk over every bin stays under a microsecond.
const BINS: usize = 1024;
/// The feedback horizon H, in requests: a deficit or excess of strong decisions is repaid
/// over about this many requests. Tuned on synthetic streams (`tests::tune_horizon_and_window`
/// prints the grid). On a stream sorted by score the window's quantile predicts nothing and the
/// feedback alone steers, with a steady offset of (1 − s)·H requests (descending) or s·H
/// (ascending): at H = 10 at most 9, so 200 requests after warm-up are within 4.5 points. A
/// larger H chases less noise (decisions that differ from the ideal threshold on i.i.d. scores:
/// 8% at H = 10, 4% at H = 50, 1.6% with no feedback) but needs stretches 5× longer to track.
pub const HORIZON: f64 = 10.0;
/// The caller for every name the config does not list.
pub const DEFAULT_CALLER: &str = "default";
/// Largest window: bin counts are 16-bit.
pub const MAX_WINDOW: usize = u16::MAX as usize;

/// A ring entry: the score's bin in the low bits, and two flags.
const BIN_MASK: u16 = (BINS - 1) as u16;
/// The request went strong at the threshold in force.
const STRONG: u16 = 1 << 15;
/// The decision was the controller's own (taken at the target-share point, after warm-up).
const STEERED: u16 = 1 << 14;

/// Where the threshold in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// The fixed threshold: this caller has no target share.
    Fixed,
    /// The caller's own window and target share.
    TargetShare,
    /// Warm-up: the pooled window of every target-share caller, at this caller's share.
    WarmupPooled,
    /// Warm-up with nothing warm yet: the fixed threshold.
    WarmupFixed,
}

impl Point {
    /// The log and JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::TargetShare => "target_share",
            Self::WarmupPooled => "warmup_pooled",
            Self::WarmupFixed => "warmup_fixed",
        }
    }
}

/// The threshold a request's score is compared with, before its quality bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InForce {
    /// The threshold, in [0, 1].
    pub threshold: f64,
    /// Where it came from.
    pub point: Point,
}

/// Window sizes and the feedback horizon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Scores kept per caller (`routing.share_window`), 1 to [`MAX_WINDOW`].
    pub window: usize,
    /// Scores a window needs before its own quantile is used (`routing.share_warmup`).
    pub warmup: usize,
    /// The feedback horizon H, in requests ([`HORIZON`]).
    pub horizon: f64,
}

/// The bin of a score in [0, 1] (anything else is clamped; NaN goes to bin 0).
fn bin_of(score: f64) -> usize {
    // `as` saturates and maps NaN to 0, so no score can index outside the bins.
    ((score.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1)
}

/// The last scores of one caller (or of all of them), with their histogram and the counts of
/// strong and steered decisions among them.
#[derive(Debug)]
struct Window {
    ring: Box<[u16]>,
    next: usize,
    len: usize,
    hist: Box<[u16]>,
    strong: u32,
    steered: u32,
    steered_strong: u32,
}

impl Window {
    /// An empty window of `capacity` scores (clamped to 1..=[`MAX_WINDOW`]).
    fn new(capacity: usize) -> Self {
        Self {
            ring: vec![0; capacity.clamp(1, MAX_WINDOW)].into_boxed_slice(),
            next: 0,
            len: 0,
            hist: vec![0; BINS].into_boxed_slice(),
            strong: 0,
            steered: 0,
            steered_strong: 0,
        }
    }

    /// Scores held.
    fn len(&self) -> usize {
        self.len
    }

    /// Share of the held decisions that went strong, if any are held.
    fn strong_share(&self) -> Option<f64> {
        (self.len > 0).then(|| f64::from(self.strong) / self.len as f64)
    }

    /// Forgets which held decisions were steered, so the feedback starts afresh.
    fn unsteer(&mut self) {
        for entry in &mut self.ring {
            *entry &= !STEERED;
        }
        self.steered = 0;
        self.steered_strong = 0;
    }

    /// The held scores, each at its bin's middle.
    fn scores(&self) -> Vec<f64> {
        self.ring[..self.len]
            .iter()
            .map(|&entry| (f64::from(entry & BIN_MASK) + 0.5) / BINS as f64)
            .collect()
    }

    /// Adds a score's bin and its decision, evicting the oldest when full; returns the evicted
    /// bin.
    fn push(&mut self, bin: usize, strong: bool, steered: bool) -> Option<usize> {
        let evicted = (self.len == self.ring.len()).then(|| {
            let old = self.ring[self.next];
            let old_bin = usize::from(old & BIN_MASK);
            self.hist[old_bin] -= 1;
            self.strong -= u32::from(old & STRONG != 0);
            self.steered -= u32::from(old & STEERED != 0);
            self.steered_strong -= u32::from(old & (STRONG | STEERED) == STRONG | STEERED);
            old_bin
        });
        if evicted.is_none() {
            self.len += 1;
        }
        let mut entry = (bin & usize::from(BIN_MASK)) as u16;
        if strong {
            entry |= STRONG;
            self.strong += 1;
        }
        if steered {
            entry |= STEERED;
            self.steered += 1;
            self.steered_strong += u32::from(strong);
        }
        self.ring[self.next] = entry;
        self.hist[usize::from(entry & BIN_MASK)] += 1;
        self.next = if self.next + 1 == self.ring.len() {
            0
        } else {
            self.next + 1
        };
        evicted
    }

    /// The threshold that sends `share` of the held scores to strong, by a walk from the top
    /// bin (up to [`BINS`] steps; [`Cursor`] does the same incrementally).
    fn threshold_for(&self, share: f64) -> f64 {
        Cursor::top().threshold(self, share)
    }

    /// The target-share threshold with the share feedback: the quantile aimed at
    /// `clamp(s + (s·n − strong_n) / horizon, 0, 1)` over the steered decisions held.
    fn steer(&self, cursor: &mut Cursor, target: f64, horizon: f64) -> f64 {
        let deficit = target * f64::from(self.steered) - f64::from(self.steered_strong);
        cursor.threshold(self, (target + deficit / horizon).clamp(0.0, 1.0))
    }
}

/// A bin of a window and the count of its scores in higher bins: where the last quantile was
/// found, so the next one is a step or two away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    bin: usize,
    above: u32,
}

impl Cursor {
    /// At the top bin, with nothing above: valid for any window.
    fn top() -> Self {
        Self {
            bin: BINS - 1,
            above: 0,
        }
    }

    /// Notes a score entering the window.
    fn entered(&mut self, bin: usize) {
        self.above += u32::from(bin > self.bin);
    }

    /// Notes a score leaving the window.
    fn left(&mut self, bin: usize) {
        self.above -= u32::from(bin > self.bin);
    }

    /// The threshold that sends `share` of `window` to strong: moves to the bin where the
    /// `share · len`-th highest score sits and interpolates inside it. Share 0 gives 1 (nothing
    /// but a score of exactly 1 goes strong), share 1 gives 0.
    fn threshold(&mut self, window: &Window, share: f64) -> f64 {
        let len = window.len as f64;
        let need = share * len;
        if need <= 0.0 {
            return 1.0;
        }
        if need >= len {
            return 0.0;
        }
        loop {
            let above = f64::from(self.above);
            let here = f64::from(window.hist[self.bin]);
            if above >= need {
                // Enough above this bin: the quantile is higher. `above > 0`, so a higher bin
                // exists.
                self.bin += 1;
                self.above -= u32::from(window.hist[self.bin]);
            } else if above + here < need {
                // Not enough even with this bin: lower. `need < len`, so a lower bin exists.
                self.above += u32::from(window.hist[self.bin]);
                self.bin -= 1;
            } else {
                let inside = (need - above) / here;
                return ((self.bin + 1) as f64 - inside) / BINS as f64;
            }
        }
    }
}

/// One target-share caller's state.
#[derive(Debug)]
struct Steered {
    window: Window,
    cursor: Cursor,
    target: f64,
    /// The share the config gives, where `target` starts.
    configured: f64,
    /// The threshold for the next request once warm (recomputed after every push).
    next: f64,
}

/// One caller the config names (or `default`).
#[derive(Debug)]
struct Slot {
    label: Box<str>,
    steered: Option<Mutex<Steered>>,
}

/// One caller's operating point, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerPoint<'a> {
    /// The configured name, or `default`.
    pub caller: &'a str,
    /// The threshold the next request would be compared with.
    pub in_force: InForce,
    /// Share of the window's decisions that went strong (target-share callers only).
    pub window_strong_share: Option<f64>,
    /// The strong share the caller is steered to now (target-share callers only).
    pub target_share: Option<f64>,
    /// The share its config gives (target-share callers only).
    pub configured_share: Option<f64>,
}

/// Every caller's operating point: the fixed threshold, and a window per target-share caller.
/// Built once from the config; shared by all requests (each caller's state behind its own
/// mutex, held for a push of a few nanoseconds).
#[derive(Debug)]
pub struct OperatingPoints {
    fixed: f64,
    settings: Settings,
    /// Named callers, sorted by name, with their slot index.
    names: Box<[(Box<str>, usize)]>,
    slots: Box<[Slot]>,
    default: usize,
    /// Every target-share caller's scores, for callers still warming up.
    pooled: Mutex<Window>,
    /// Target-share callers still warming up: while none is, the pooled window is not fed.
    cold: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a window inconsistent in a way that matters
    // more than refusing every later request would.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OperatingPoints {
    /// The fixed threshold `fixed` for callers without a target share; `default_share` for the
    /// callers not in `named`, whose entries give each named caller's share (already resolved
    /// through `[callers.default]` and `routing.target_strong_share`).
    pub fn new(
        fixed: f64,
        settings: Settings,
        default_share: Option<f64>,
        named: impl IntoIterator<Item = (String, Option<f64>)>,
    ) -> Self {
        let mut named: Vec<(String, Option<f64>)> = named
            .into_iter()
            .filter(|(name, _)| name != DEFAULT_CALLER)
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.dedup_by(|a, b| a.0 == b.0);
        let slot = |label: &str, share: Option<f64>| Slot {
            label: label.into(),
            steered: share.map(|target| {
                let target = target.clamp(0.0, 1.0);
                Mutex::new(Steered {
                    window: Window::new(settings.window),
                    cursor: Cursor::top(),
                    target,
                    configured: target,
                    next: fixed,
                })
            }),
        };
        let mut slots: Vec<Slot> = named
            .iter()
            .map(|(name, share)| slot(name, *share))
            .collect();
        slots.push(slot(DEFAULT_CALLER, default_share));
        let cold = slots.iter().filter(|s| s.steered.is_some()).count();
        Self {
            fixed,
            settings,
            names: named
                .into_iter()
                .enumerate()
                .map(|(i, (name, _))| (name.into_boxed_str(), i))
                .collect(),
            default: slots.len() - 1,
            slots: slots.into_boxed_slice(),
            pooled: Mutex::new(Window::new(settings.window)),
            cold: AtomicUsize::new(cold),
        }
    }

    /// The fixed threshold.
    pub fn fixed(&self) -> f64 {
        self.fixed
    }

    /// Whether any caller has a target share.
    pub fn has_target_share(&self) -> bool {
        self.slots.iter().any(|s| s.steered.is_some())
    }

    fn slot(&self, caller: &str) -> &Slot {
        let i = self
            .names
            .binary_search_by(|(name, _)| (**name).cmp(caller))
            .map_or(self.default, |found| self.names[found].1);
        &self.slots[i]
    }

    /// The threshold in force for a warming-up caller with share `target`.
    fn warming(&self, target: f64, pooled: &Window) -> InForce {
        if pooled.len() >= self.settings.warmup {
            InForce {
                threshold: pooled.threshold_for(target),
                point: Point::WarmupPooled,
            }
        } else {
            InForce {
                threshold: self.fixed,
                point: Point::WarmupFixed,
            }
        }
    }

    fn fixed_point(&self) -> InForce {
        InForce {
            threshold: self.fixed,
            point: Point::Fixed,
        }
    }

    /// The threshold in force for `caller`'s next request, without recording anything (for
    /// requests that do not use it: forced, capability-bound).
    pub fn in_force(&self, caller: &str) -> InForce {
        self.in_force_at(self.slot(caller))
    }

    fn in_force_at(&self, slot: &Slot) -> InForce {
        let Some(steered) = &slot.steered else {
            return self.fixed_point();
        };
        let steered = lock(steered);
        if steered.window.len() < self.settings.warmup {
            self.warming(steered.target, &lock(&self.pooled))
        } else {
            InForce {
                threshold: steered.next,
                point: Point::TargetShare,
            }
        }
    }

    /// The threshold in force for `caller`'s request with `score`, which is then recorded in
    /// the caller's window with its decision (`score ≥ threshold`) and moves the next threshold.
    pub fn observe(&self, caller: &str, score: f64) -> InForce {
        let Some(steered) = &self.slot(caller).steered else {
            return self.fixed_point();
        };
        let mut steered = lock(steered);
        let s = &mut *steered;
        let warm = s.window.len() >= self.settings.warmup;
        // Lock order: a caller's window, then the pooled one.
        let mut pooled =
            (!warm || self.cold.load(Ordering::Relaxed) > 0).then(|| lock(&self.pooled));
        let in_force = match &pooled {
            Some(pooled) if !warm => self.warming(s.target, pooled),
            _ => InForce {
                threshold: s.next,
                point: Point::TargetShare,
            },
        };
        let bin = bin_of(score);
        if let Some(old) = s.window.push(bin, score >= in_force.threshold, warm) {
            s.cursor.left(old);
        }
        s.cursor.entered(bin);
        if let Some(pooled) = pooled.as_mut() {
            pooled.push(bin, false, false);
        }
        if s.window.len() >= self.settings.warmup {
            if !warm {
                self.cold.fetch_sub(1, Ordering::Relaxed);
            }
            s.next = s
                .window
                .steer(&mut s.cursor, s.target, self.settings.horizon);
        }
        in_force
    }

    /// Every configured caller and `default`, with the threshold in force: bounded by the
    /// config, so usable as metric labels.
    pub fn callers(&self) -> impl Iterator<Item = CallerPoint<'_>> {
        self.slots.iter().map(|slot| {
            let steered = slot.steered.as_ref().map(|s| {
                let s = lock(s);
                (s.window.strong_share(), s.target, s.configured)
            });
            CallerPoint {
                caller: &slot.label,
                in_force: self.in_force_at(slot),
                window_strong_share: steered.and_then(|(share, _, _)| share),
                target_share: steered.map(|(_, target, _)| target),
                configured_share: steered.map(|(_, _, configured)| configured),
            }
        })
    }

    /// The recent scores of `caller` (a configured name or `default`), each to 1/1024, for a
    /// target-share caller.
    pub fn scores(&self, caller: &str) -> Option<Vec<f64>> {
        let steered = self.slot(caller).steered.as_ref()?;
        Some(lock(steered).window.scores())
    }

    /// Steers `caller` (a configured name or `default`) to strong share `share` from its next
    /// request; returns the share it replaces, `None` (and changes nothing) for a caller with
    /// no target share.
    pub fn set_share(&self, caller: &str, share: f64) -> Option<f64> {
        let steered = self.slot(caller).steered.as_ref()?;
        let mut steered = lock(steered);
        let s = &mut *steered;
        let old = s.target;
        s.target = share.clamp(0.0, 1.0);
        s.window.unsteer();
        if s.window.len() >= self.settings.warmup {
            s.next = s
                .window
                .steer(&mut s.cursor, s.target, self.settings.horizon);
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::eval::random_scores;

    const DEFAULTS: Settings = Settings {
        window: 1000,
        warmup: 100,
        horizon: HORIZON,
    };

    /// One default caller with share `target` and the fixed threshold 0.5.
    fn single(target: f64, settings: Settings) -> OperatingPoints {
        OperatingPoints::new(0.5, settings, Some(target), [])
    }

    /// The synthetic streams the controller is tuned and checked on.
    fn shapes(n: usize, seed: u64) -> Vec<(&'static str, Vec<f64>)> {
        let u = random_scores(n * 8, seed);
        let uniform: Vec<f64> = u[..n].to_vec();
        // The k-th smallest of a+b−1 uniforms is Beta(k, a+b−k): Beta(2, 5) peaks near 0.2,
        // like the classifier's scores on short chat requests; Beta(5, 2) near 0.8.
        let beta = |k: usize, of: usize, chunk: &[f64]| {
            let mut v = chunk[..of].to_vec();
            v.sort_by(f64::total_cmp);
            v[k - 1]
        };
        let low: Vec<f64> = u.chunks(6).take(n).map(|c| beta(2, 6, c)).collect();
        let high: Vec<f64> = u.chunks(6).take(n).map(|c| beta(5, 6, c)).collect();
        let mut ascending = uniform.clone();
        ascending.sort_by(f64::total_cmp);
        let descending: Vec<f64> = ascending.iter().rev().copied().collect();
        // Identical requests (a health check, a templated prompt) score identically: 40% at
        // 0.12, 10% at 0.35, 35% at 0.8, the rest spread.
        let bimodal: Vec<f64> = uniform
            .iter()
            .zip(&u[n..2 * n])
            .map(|(&pick, &spread)| match pick {
                p if p < 0.40 => 0.12,
                p if p < 0.50 => 0.35,
                p if p < 0.85 => 0.8,
                _ => spread,
            })
            .collect();
        let shift: Vec<f64> = low[..n / 2].iter().chain(&high[n / 2..]).copied().collect();
        vec![
            ("uniform", uniform),
            ("beta(2,5)", low),
            ("ascending", ascending),
            ("descending", descending),
            ("bimodal ties", bimodal),
            ("shift at half", shift),
        ]
    }

    /// Replays `scores` through one caller; returns (share of strong decisions taken at the
    /// target-share point, how many there were, every threshold used).
    fn replay(points: &OperatingPoints, scores: &[f64]) -> (f64, usize, Vec<f64>) {
        let (mut steered, mut strong) = (0usize, 0usize);
        let mut thresholds = Vec::with_capacity(scores.len());
        for &score in scores {
            let in_force = points.observe("", score);
            thresholds.push(in_force.threshold);
            if in_force.point == Point::TargetShare {
                steered += 1;
                strong += usize::from(score >= in_force.threshold);
            }
        }
        (strong as f64 / steered.max(1) as f64, steered, thresholds)
    }

    const TARGETS: [f64; 4] = [0.1, 0.3, 0.5, 0.8];
    const LENGTHS: [usize; 3] = [300, 1000, 2000];

    /// Per shape, the worst |realised − target| after warm-up over every target and length,
    /// and where it was.
    fn worst_by_shape(settings: Settings) -> Vec<(&'static str, f64, String)> {
        let mut worst: Vec<(&'static str, f64, String)> = Vec::new();
        for n in LENGTHS {
            for (i, (name, scores)) in shapes(n, 7).into_iter().enumerate() {
                if worst.len() == i {
                    worst.push((name, 0.0, String::new()));
                }
                for target in TARGETS {
                    let (share, _, _) = replay(&single(target, settings), &scores);
                    let off = (share - target).abs();
                    if off > worst[i].1 {
                        worst[i] = (name, off, format!("n = {n}, s = {target}"));
                    }
                }
            }
        }
        worst
    }

    /// The worst |realised − target| after warm-up over every shape, target and length.
    fn worst(settings: Settings) -> (f64, String) {
        worst_by_shape(settings)
            .into_iter()
            .map(|(name, off, at)| (off, format!("{name}, {at}")))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or_default()
    }

    /// On i.i.d. uniform scores the ideal threshold for share s is 1 − s: the share of
    /// steered decisions that differ from it measures how much noise the feedback chases.
    fn churn(settings: Settings) -> f64 {
        let scores = random_scores(2000, 11);
        let mut differ = 0usize;
        let mut steered = 0usize;
        for target in TARGETS {
            let points = single(target, settings);
            for &score in &scores {
                let in_force = points.observe("", score);
                if in_force.point == Point::TargetShare {
                    steered += 1;
                    differ += usize::from((score >= in_force.threshold) != (score >= 1.0 - target));
                }
            }
        }
        differ as f64 / steered as f64
    }

    #[test]
    fn tune_horizon_and_window() {
        // Printed with --nocapture: the grid HORIZON and the default window were chosen from.
        for window in [250, 500, 1000] {
            for horizon in [5.0, 8.0, 10.0, 15.0, 20.0, 50.0, f64::INFINITY] {
                let settings = Settings {
                    window,
                    warmup: 100,
                    horizon,
                };
                let (off, at) = worst(settings);
                println!(
                    "window {window:>4}  H {horizon:>5}: worst share error {off:.3} ({at}); \
                     decisions off the ideal on uniform {:.3}",
                    churn(settings)
                );
            }
        }
        for (name, off, at) in worst_by_shape(DEFAULTS) {
            println!("defaults, {name:<14} worst share error {off:.3} ({at})");
        }
        let (off, at) = worst(DEFAULTS);
        assert!(off <= 0.05, "worst share error {off:.3} at {at}");
    }

    #[test]
    fn realised_share_tracks_every_target_on_every_shape() {
        for n in LENGTHS {
            for (name, scores) in shapes(n, 3) {
                for target in TARGETS {
                    let (share, steered, thresholds) = replay(&single(target, DEFAULTS), &scores);
                    assert_eq!(steered, n - DEFAULTS.warmup, "{name}");
                    assert!(
                        (share - target).abs() <= 0.05,
                        "{name}, n = {n}, target {target}: realised {share:.3}"
                    );
                    assert!(thresholds.iter().all(|t| (0.0..=1.0).contains(t)));
                }
            }
        }
    }

    #[test]
    fn shares_0_and_1_send_nothing_and_everything() {
        for (name, scores) in shapes(500, 5) {
            let (none, _, _) = replay(&single(0.0, DEFAULTS), &scores);
            let (all, _, _) = replay(&single(1.0, DEFAULTS), &scores);
            assert_eq!((none, all), (0.0, 1.0), "{name}");
        }
    }

    #[test]
    fn warm_up_uses_the_fixed_threshold_then_the_pooled_window() {
        let points = OperatingPoints::new(
            0.42,
            Settings {
                window: 50,
                warmup: 10,
                horizon: HORIZON,
            },
            None,
            [("a".to_owned(), Some(0.5)), ("b".to_owned(), Some(0.2))],
        );
        let scores = random_scores(40, 9);
        for (i, &score) in scores[..12].iter().enumerate() {
            let point = points.observe("a", score).point;
            let expected = if i < 10 {
                Point::WarmupFixed
            } else {
                Point::TargetShare
            };
            assert_eq!(point, expected, "request {i} of a");
        }
        // b is cold but the pooled window holds a's 12 scores.
        let pooled = points.observe("b", 0.3);
        assert_eq!(pooled.point, Point::WarmupPooled);
        let mut sorted = scores[..12].to_vec();
        sorted.sort_by(f64::total_cmp);
        // 20% of 12 = 2.4 scores above the threshold: between the 3rd and 2nd highest bins.
        assert!(pooled.threshold <= sorted[10] && pooled.threshold > sorted[8]);
        // Callers without a target share, named or not, keep the fixed threshold.
        assert_eq!(
            points.observe("unknown", 0.9),
            InForce {
                threshold: 0.42,
                point: Point::Fixed
            }
        );
        let shown: Vec<(&str, Point)> = points
            .callers()
            .map(|c| (c.caller, c.in_force.point))
            .collect();
        assert_eq!(
            shown,
            [
                ("a", Point::TargetShare),
                ("b", Point::WarmupPooled),
                ("default", Point::Fixed)
            ]
        );
    }

    #[test]
    fn a_new_share_moves_the_threshold_at_once_without_repaying_the_old_one() {
        let points = single(0.2, DEFAULTS);
        let scores = random_scores(4000, 9);
        replay(&points, &scores[..2000]);
        assert_eq!(points.set_share(DEFAULT_CALLER, 0.5), Some(0.2));
        let first = points.in_force("anyone");
        assert_eq!(first.point, Point::TargetShare);
        // Uniform scores: the median, not the 0 that repaying 0.5 over the old decisions gives.
        assert!((first.threshold - 0.5).abs() < 0.06, "{first:?}");
        let (share, steered, _) = replay(&points, &scores[2000..]);
        assert_eq!(steered, 2000);
        assert!((share - 0.5).abs() < 0.03, "realised {share}");
        let point = points.callers().next().unwrap();
        assert_eq!(
            (point.target_share, point.configured_share),
            (Some(0.5), Some(0.2))
        );
        let held = points.scores(DEFAULT_CALLER).unwrap();
        assert_eq!(held.len(), DEFAULTS.window);
        assert!(held.iter().all(|s| (0.0..=1.0).contains(s)));
        // A caller with the fixed threshold has no share to change.
        let fixed = OperatingPoints::new(0.5, DEFAULTS, None, []);
        assert_eq!(fixed.set_share(DEFAULT_CALLER, 0.5), None);
        assert_eq!(fixed.in_force("x").point, Point::Fixed);
        assert_eq!(fixed.scores(DEFAULT_CALLER), None);
    }

    #[test]
    fn unknown_callers_share_the_default_window() {
        let points = OperatingPoints::new(0.5, DEFAULTS, Some(0.3), [("named".to_owned(), None)]);
        for (i, score) in random_scores(150, 1).into_iter().enumerate() {
            points.observe(&format!("caller-{i}"), score);
        }
        assert_eq!(points.in_force("someone-new").point, Point::TargetShare);
        assert_eq!(points.in_force("named").point, Point::Fixed);
        assert_eq!(points.callers().count(), 2);
    }

    /// Bytes a window holds, its buffers included.
    fn bytes(window: &Window) -> usize {
        std::mem::size_of::<Window>() + 2 * (window.ring.len() + window.hist.len())
    }

    #[test]
    fn memory_stays_bounded() {
        let mut window = Window::new(1000);
        let held = bytes(&window);
        assert!(held < 4300, "{held} bytes");
        for (i, score) in random_scores(100_000, 2).into_iter().enumerate() {
            window.push(bin_of(score), i % 3 == 0, i % 2 == 0);
        }
        assert_eq!((window.len(), bytes(&window)), (1000, held));
        assert_eq!(
            window.hist.iter().map(|&c| usize::from(c)).sum::<usize>(),
            1000
        );
    }

    proptest! {
        #[test]
        fn the_cursor_finds_what_a_full_walk_finds(
            scores in prop::collection::vec(0.0f64..=1.0, 1..400),
            shares in prop::collection::vec(0.0f64..=1.0, 1..400),
            capacity in 1usize..100,
        ) {
            let mut window = Window::new(capacity);
            let mut cursor = Cursor::top();
            for (score, share) in scores.iter().zip(shares.iter().cycle()) {
                let bin = bin_of(*score);
                if let Some(old) = window.push(bin, false, false) {
                    cursor.left(old);
                }
                cursor.entered(bin);
                let walked = window.threshold_for(*share);
                prop_assert_eq!(cursor.threshold(&window, *share), walked);
                prop_assert!((0.0..=1.0).contains(&walked));
            }
        }

        #[test]
        fn any_stream_keeps_thresholds_in_range(
            scores in prop::collection::vec(prop_oneof![0.0f64..=1.0, Just(0.0), Just(1.0), Just(f64::NAN)], 1..600),
            target in 0.0f64..=1.0,
            window in 1usize..300,
            warmup in 1usize..300,
        ) {
            let settings = Settings { window, warmup: warmup.min(window), horizon: HORIZON };
            let points = single(target, settings);
            for score in scores {
                let t = points.observe("", score).threshold;
                prop_assert!((0.0..=1.0).contains(&t), "{}", t);
            }
        }
    }
}
