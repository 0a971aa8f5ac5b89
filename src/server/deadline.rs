//! The caller's deadline as it arrives (`grpc-timeout`), and how much of it the router uses.
//!
//! The router answers `DEADLINE_EXCEEDED` a little before the advertised deadline, so that its
//! status (with a message, counted as `deadline_exceeded`) reaches the caller before the
//! caller's own timer ends the call (a bare client-side status, counted `cancelled`). The margin
//! must cover two things:
//!
//! - **Rounding.** Clients round the timeout they advertise. gRPC C-core (grpcio, the C++, Ruby
//!   and PHP clients) sends the time left rounded *up* to three significant digits — 10 ms steps
//!   from 1 s, 100 ms steps from 10 s, whole seconds from 100 s — computed from a clock read that
//!   can lag by a millisecond or two: 10 s goes out as `10100m`. Up to 1% of the deadline is
//!   advertised that the caller will not wait for. grpc-go rounds up to the nanosecond below
//!   0.1 s, the microsecond below 100 s and the millisecond above; tonic truncates.
//! - **The trip back.** Time on the wire both ways, the runtime's millisecond timer, scheduling.
//!
//! So the margin is 1% of the advertised time plus 20 ms, but never more than half of it (a
//! 10 ms deadline keeps 5 ms for the call).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Time kept for the status to travel back, beyond the caller's rounding.
const TRIP_BACK: Duration = Duration::from_millis(20);
/// Largest share of the advertised timeout that a client's rounding may add (C-core's three
/// significant digits: a step of at most a hundredth of the value).
const ROUNDING_DIVISOR: u32 = 100;

/// Reads the `grpc-timeout` header: at most 8 digits and a unit, as gRPC over HTTP/2 defines
/// it; anything else is ignored (the transport ignores it too).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse(metadata.get("grpc-timeout")?.to_str().ok()?)
}

fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How much earlier than the advertised timeout the router answers.
pub fn margin(advertised: Duration) -> Duration {
    (TRIP_BACK + advertised / ROUNDING_DIVISOR).min(advertised / 2)
}

/// The time the router gives a call whose caller advertised `advertised`.
pub fn budget(advertised: Duration) -> Duration {
    advertised.saturating_sub(margin(advertised))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut md = MetadataMap::new();
        for (value, expected) in [
            ("200m", Some(Duration::from_millis(200))),
            ("5S", Some(Duration::from_secs(5))),
            ("1H", Some(Duration::from_secs(3600))),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("1500u", Some(Duration::from_micros(1500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("2M", Some(Duration::from_secs(120))),
            ("999999999H", None),
            ("10x", None),
            ("m", None),
            ("", None),
        ] {
            md.insert("grpc-timeout", value.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), expected, "{value:?}");
        }
    }

    fn up(value: u64, step: u64) -> u64 {
        value.div_ceil(step)
    }

    /// gRPC C-core's `Timeout::FromMillis(..).Encode()` (src/core/lib/transport/
    /// timeout_encoding.cc), for a time left of `millis` as its millisecond clock sees it.
    fn c_core(millis: u64) -> String {
        if millis == 0 {
            return "1n".into();
        }
        if millis < 1_000 {
            return format!("{millis}m");
        }
        if millis < 10_000 {
            let tens = up(millis, 10);
            if !tens.is_multiple_of(100) {
                return format!("{tens}0m");
            }
        } else if millis < 100_000 {
            let hundreds = up(millis, 100);
            if !hundreds.is_multiple_of(10) {
                return format!("{hundreds}00m");
            }
        }
        let seconds = up(millis, 1_000);
        if seconds < 1_000 {
            if !seconds.is_multiple_of(60) {
                return format!("{seconds}S");
            }
        } else if seconds < 10_000 {
            let tens = up(seconds, 10);
            if !(tens * 10).is_multiple_of(60) {
                return format!("{tens}0S");
            }
        }
        let minutes = up(seconds, 60);
        if minutes < 1_000 && !minutes.is_multiple_of(60) {
            return format!("{minutes}M");
        }
        format!("{}H", up(minutes, 60).min(27_000))
    }

    /// grpc-go's `encodeTimeout` (internal/transport/http_util.go): the finest unit whose
    /// value, rounded up, has at most 8 digits.
    fn grpc_go(left: Duration) -> String {
        let nanos = left.as_nanos();
        for (unit, per) in [
            ('n', 1u128),
            ('u', 1_000),
            ('m', 1_000_000),
            ('S', 1_000_000_000),
            ('M', 60_000_000_000),
        ] {
            let value = nanos.div_ceil(per);
            if value <= 99_999_999 {
                return format!("{value}{unit}");
            }
        }
        format!("{}H", nanos.div_ceil(3_600_000_000_000))
    }

    /// tonic's own encoding, as `Request::set_timeout` writes it.
    fn tonic(left: Duration) -> String {
        let mut request = tonic::Request::new(());
        request.set_timeout(left);
        request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default()
    }

    /// Times left at the moment a client encodes: a geometric sweep from 10 ms to 120 s, and
    /// each side of every point where an encoding changes its step.
    fn sweep() -> Vec<Duration> {
        let mut out = Vec::new();
        let mut t = 0.010_f64;
        while t <= 120.0 {
            out.push(Duration::from_secs_f64(t));
            t *= 1.013;
        }
        for edge_ms in [
            10u64, 100, 999, 1_000, 9_999, 10_000, 60_000, 99_999, 100_000, 120_000,
        ] {
            let edge = Duration::from_millis(edge_ms);
            for nudge_us in [1u64, 500, 1_000, 1_500] {
                out.push(edge - Duration::from_micros(nudge_us));
                out.push(edge + Duration::from_micros(nudge_us));
            }
            out.push(edge);
        }
        out.retain(|t| (Duration::from_millis(10)..=Duration::from_secs(120)).contains(t));
        out
    }

    /// How long before the caller's timer the router's answer is due, for a caller with `left`
    /// whose header says `header` (negative: the caller gives up first).
    fn headroom(left: Duration, header: &str) -> f64 {
        let advertised = parse(header).unwrap_or_else(|| panic!("{header:?} parses"));
        left.as_secs_f64() - budget(advertised).as_secs_f64()
    }

    #[test]
    fn the_router_answers_before_every_clients_own_timer() {
        // C-core's clock lags by up to a couple of milliseconds (a cached "now" and a deadline
        // rounded up to the next millisecond): it encodes more time than is left.
        let lags_ms = [0u64, 1, 2];
        let mut worst = (f64::INFINITY, String::new());
        let mut checked = 0;
        let mut broken = Vec::new();
        for left in sweep() {
            let left_ms = u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            let headers = lags_ms
                .iter()
                .map(|lag| ("C-core", c_core(left_ms + lag)))
                .chain([("grpc-go", grpc_go(left)), ("tonic", tonic(left))]);
            // The promise: the answer is due at least 15 ms (a quarter of the time, for
            // deadlines under 60 ms) before the caller's timer.
            let promised = (left / 4).min(Duration::from_millis(15)).as_secs_f64();
            for (client, header) in headers {
                let room = headroom(left, &header);
                checked += 1;
                if room < promised {
                    broken.push(format!(
                        "{client} with {left:?} left sends {header:?}: the router's answer is due \
                         {:.2} ms before the caller's timer, under the {:.2} ms promised",
                        room * 1e3,
                        promised * 1e3
                    ));
                }
                if room - promised < worst.0 {
                    worst = (room - promised, format!("{client} {left:?} {header}"));
                }
            }
        }
        assert!(checked > 3_000, "{checked}");
        let tens = broken.iter().filter(|b| b.contains("\"10100m\"")).take(3);
        assert!(
            broken.is_empty(),
            "{} of {checked} encodings break the margin, among them:\n{}\n{}",
            broken.len(),
            broken[..broken.len().min(3)].join("\n"),
            tens.cloned().collect::<Vec<_>>().join("\n")
        );
        println!(
            "{checked} encodings; closest to the promise: {} ({:.2} ms spare)",
            worst.1,
            worst.0 * 1e3
        );
    }

    #[test]
    fn the_encoders_match_their_sources() {
        // Cases of C-core's own unit test (test/core/transport/timeout_encoding_test.cc), and
        // the 10 s deadline that went out as 10100m.
        for (millis, expected) in [
            (1, "1m"),
            (10, "10m"),
            (100, "100m"),
            (890, "890m"),
            (900, "900m"),
            (901, "901m"),
            (1_000, "1S"),
            (2_000, "2S"),
            (2_500, "2500m"),
            (59_900, "59900m"),
            (50_000, "50S"),
            (59_000, "59S"),
            (60_000, "1M"),
            (10_001, "10100m"),
        ] {
            assert_eq!(c_core(millis), expected, "{millis} ms");
        }
        assert_eq!(grpc_go(Duration::from_millis(50)), "50000000n");
        assert_eq!(grpc_go(Duration::from_secs(10)), "10000000u");
        assert_eq!(grpc_go(Duration::from_secs(120)), "120000m");
        assert_eq!(tonic(Duration::from_secs(30)), "30000000u");
        assert_eq!(tonic(Duration::from_nanos(100_000_000_999)), "100000m");
    }

    #[test]
    fn the_margin_is_a_hundredth_plus_the_trip_back_at_most_half() {
        assert_eq!(margin(Duration::from_millis(10)), Duration::from_millis(5));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(30));
        assert_eq!(
            margin(Duration::from_millis(10_100)),
            Duration::from_millis(121)
        );
        assert_eq!(
            margin(Duration::from_secs(120)),
            Duration::from_millis(1_220)
        );
        assert_eq!(budget(Duration::ZERO), Duration::ZERO);
    }
}
