//! The duels' USD-per-hour cap: a duel reserves its worst-case cost before its first call and
//! settles to what it cost after its last, and a reservation that would take the last hour's
//! spend over the cap is refused, so the cap holds over every hour, not only on average.
//!
//! Spend is kept in one-minute buckets, [`BUCKETS`] of them, and a reservation is checked against
//! every bucket of the last 60 minutes and the current one. Any hour-long interval's
//! reservations then lie within the 61 buckets its last reservation was checked against, and
//! settling only lowers a bucket, so no interval of an hour spends more than the cap. Memory is
//! fixed, however many duels run.

use std::time::{Duration, Instant};

use prompt_router_core::cost::Nanodollars;

/// Bucket width.
const MINUTE: Duration = Duration::from_secs(60);
/// The last hour's buckets and the current one.
pub const BUCKETS: usize = 61;

/// The spend of the last hour against its cap.
#[derive(Debug)]
pub struct SpendCap {
    cap: Nanodollars,
    start: Instant,
    /// Per slot: the minute (since `start`) it holds and what was spent in it.
    buckets: [(u64, u64); BUCKETS],
}

/// A duel's reservation, to settle once its calls are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a reservation is settled to the duel's real cost"]
pub struct Reservation {
    minute: u64,
    amount: u64,
}

impl SpendCap {
    /// A cap of `cap` per hour, counted from `now`.
    pub fn new(cap: Nanodollars, now: Instant) -> Self {
        Self {
            cap,
            start: now,
            buckets: [(u64::MAX, 0); BUCKETS],
        }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / MINUTE.as_secs()
    }

    /// Spend in the hour up to `now` (the current minute's bucket and the 60 before it).
    pub fn spent(&self, now: Instant) -> Nanodollars {
        let minute = self.minute(now);
        let oldest = minute.saturating_sub(BUCKETS as u64 - 1);
        Nanodollars(
            self.buckets
                .iter()
                .filter(|(m, _)| *m != u64::MAX && (oldest..=minute).contains(m))
                .map(|(_, spent)| *spent)
                .fold(0u64, u64::saturating_add),
        )
    }

    /// Reserves `worst` at `now` if the last hour's spend leaves room for it.
    pub fn reserve(&mut self, worst: Nanodollars, now: Instant) -> Option<Reservation> {
        if self.spent(now).0.saturating_add(worst.0) > self.cap.0 {
            return None;
        }
        let minute = self.minute(now);
        let slot = &mut self.buckets[(minute % BUCKETS as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(worst.0);
        Some(Reservation {
            minute,
            amount: worst.0,
        })
    }

    /// Settles `reservation` to `actual`: the unspent part is given back. A duel that cost more
    /// than it reserved (the bound was wrong) is charged what it cost.
    pub fn settle(&mut self, reservation: Reservation, actual: Nanodollars) {
        let slot = &mut self.buckets[(reservation.minute % BUCKETS as u64) as usize];
        if slot.0 != reservation.minute {
            // Its hour is over: nothing to give back.
            return;
        }
        slot.1 = slot
            .1
            .saturating_sub(reservation.amount)
            .saturating_add(actual.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn reservations_stop_at_the_cap_and_settling_gives_back_the_rest() {
        let t0 = Instant::now();
        let mut cap = SpendCap::new(Nanodollars(100), t0);
        let a = cap.reserve(Nanodollars(60), t0).unwrap();
        assert_eq!(cap.reserve(Nanodollars(41), t0), None);
        let b = cap.reserve(Nanodollars(40), at(t0, 30)).unwrap();
        assert_eq!(cap.spent(at(t0, 30)), Nanodollars(100));
        cap.settle(a, Nanodollars(10));
        assert_eq!(cap.spent(at(t0, 30)), Nanodollars(50));
        assert!(cap.reserve(Nanodollars(50), at(t0, 31)).is_some());
        assert_eq!(cap.reserve(Nanodollars(1), at(t0, 31)), None);
        cap.settle(b, Nanodollars(40));
        assert_eq!(cap.spent(at(t0, 31)), Nanodollars(100));
    }

    #[test]
    fn no_hour_long_interval_spends_more_than_the_cap() {
        // A reservation every 7 s for 5 hours, each settled to its worst case: then every
        // interval of 3600 s holds at most the cap.
        let t0 = Instant::now();
        let mut cap = SpendCap::new(Nanodollars(1_000), t0);
        let mut made = Vec::new();
        for s in (0..5 * 3600).step_by(7) {
            if let Some(r) = cap.reserve(Nanodollars(30), at(t0, s)) {
                cap.settle(r, Nanodollars(30));
                made.push(s);
            }
        }
        for (i, &start) in made.iter().enumerate() {
            let within = made[i..].iter().take_while(|&&s| s < start + 3600).count();
            assert!(within * 30 <= 1_000, "{within} duels from {start} s");
        }
        // And the cap is used, not starved: about 33 a hour over 5 hours.
        assert!(made.len() >= 5 * 30, "{}", made.len());
    }

    #[test]
    fn an_hour_later_the_spend_is_forgotten() {
        let t0 = Instant::now();
        let mut cap = SpendCap::new(Nanodollars(100), t0);
        let r = cap.reserve(Nanodollars(100), t0).unwrap();
        assert_eq!(cap.reserve(Nanodollars(1), at(t0, 3599)), None);
        assert_eq!(cap.reserve(Nanodollars(1), at(t0, 3659)), None);
        // Minute 61 reuses minute 0's bucket.
        let later = at(t0, 3660);
        assert!(cap.reserve(Nanodollars(60), later).is_some());
        // Settling the old reservation after its bucket was reused changes nothing.
        cap.settle(r, Nanodollars(0));
        assert_eq!(cap.spent(later), Nanodollars(60));
    }
}
