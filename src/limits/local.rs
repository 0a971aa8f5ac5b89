//! The in-process store: each caller's rate TATs and the spend of its current day and month,
//! one entry per caller label (bounded by the config). The default store, and the estimate a
//! router falls back on while the shared one is unreachable (seeded with the spend Redis last
//! reported).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use prompt_router_core::{
    cost::Nanodollars,
    limits::{Ask, Period},
};

use super::{Entry, Held, Limit, Now, Outcome, Refused, entry};

/// Every caller's counts.
#[derive(Debug)]
pub struct Local {
    started: Instant,
    callers: Mutex<HashMap<Arc<str>, Counts>>,
}

impl Default for Local {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            callers: Mutex::new(HashMap::new()),
        }
    }
}

/// One caller's counts.
#[derive(Debug, Default)]
struct Counts {
    requests_tat: Option<f64>,
    tokens_tat: Option<f64>,
    day: (String, Nanodollars),
    month: (String, Nanodollars),
}

impl Counts {
    /// The spend of the periods holding `now`: a new period starts at zero.
    fn roll(&mut self, day: &str, month: &str) {
        if self.day.0 != day {
            self.day = (day.to_owned(), Nanodollars(0));
        }
        if self.month.0 != month {
            self.month = (month.to_owned(), Nanodollars(0));
        }
    }
}

impl Local {
    fn now_us(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e6
    }

    /// Admits `ask` for `label` against this process's counts.
    pub(super) fn admit(self: &Arc<Self>, label: &Arc<str>, ask: &Ask, now: Now) -> Outcome {
        let now_us = self.now_us();
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = callers.entry(Arc::clone(label)).or_default();
        let day_key = Period::Day.key(now.unix_secs);
        let month_key = Period::Month.key(now.unix_secs);
        counts.roll(&day_key, &month_key);
        let requests_tat = match ask
            .requests
            .map(|g| g.admit(counts.requests_tat, now_us, 1.0))
        {
            Some(Err(after)) => return Outcome::Refused(Refused::Rate(Limit::Requests, after)),
            Some(Ok(tat)) => Some(tat),
            None => None,
        };
        let tokens_tat = match ask
            .tokens
            .map(|g| g.admit(counts.tokens_tat, now_us, ask.input_tokens as f64))
        {
            Some(Err(after)) => return Outcome::Refused(Refused::Rate(Limit::Tokens, after)),
            Some(Ok(tat)) => Some(tat),
            None => None,
        };
        let spend = match ask.spend(counts.day.1, counts.month.1) {
            Ok(spend) => spend,
            Err(period) => return Outcome::Refused(Refused::Budget(period)),
        };
        counts.requests_tat = requests_tat.or(counts.requests_tat);
        counts.tokens_tat = tokens_tat.or(counts.tokens_tat);
        counts.day.1.0 += spend.reserved.0;
        counts.month.1.0 += spend.reserved.0;
        Outcome::Admitted {
            spend,
            day: counts.day.1,
            month: counts.month.1,
            entry: entry(label, ask, now, spend.reserved),
            held: Held::Local(Arc::clone(self)),
        }
    }

    /// Corrects a reservation made here by `spend` nano-dollars and `tokens` tokens (either
    /// may be negative); a period that has ended since is left alone.
    pub(super) fn correct(&self, entry: &Entry, spend: i64, tokens: i64) {
        if spend == 0 && tokens == 0 {
            return;
        }
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(counts) = callers.get_mut(&entry.label) else {
            return;
        };
        for (key, total) in [
            (&entry.day, &mut counts.day),
            (&entry.month, &mut counts.month),
        ] {
            if total.0 == *key {
                total.1 = Nanodollars(total.1.0.saturating_add_signed(spend));
            }
        }
        if let (Some(interval), Some(tat)) = (entry.token_interval_us, &mut counts.tokens_tat) {
            *tat += tokens as f64 * interval;
        }
    }

    /// Takes the spend the shared store reported for `label` as this process's estimate, for
    /// while the store is unreachable.
    pub(super) fn seed(&self, entry: &Entry, day: Nanodollars, month: Nanodollars) {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = callers.entry(Arc::clone(&entry.label)).or_default();
        counts.day = (entry.day.clone(), day);
        counts.month = (entry.month.clone(), month);
    }
}
