//! Loading and checking: the layers, every problem at once with its key and what set it, the
//! catalog, the caps, the deprecated name.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::{raw::RawModel, *};
use crate::{catalog::Tier, cost::Prices, operating::DEFAULT_CALLER, request::MAX_CALLER_LEN};

fn env_from(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_str(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_with(toml_text, env, &Overrides::default())
}

fn load_with(
    toml_text: &str,
    env: &[(&str, &str)],
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("router-config-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).map_err(|source| ConfigError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let path = dir.join("router.toml");
    std::fs::write(&path, toml_text).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let result = Config::load(Some(&path), env_from(env), overrides);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[test]
fn defaults_are_valid_and_use_us_profiles() {
    let config = Config::load(None, env_from(&[]), &Overrides::default()).expect("defaults valid");
    assert_eq!(config.bedrock.geography, Geography::Us);
    let catalog = &config.catalog;
    assert_eq!(catalog.model(Tier::Strong).max_output_tokens, 8192);
    assert_eq!(catalog.model(Tier::Fast).max_output_tokens, 4096);
    assert_eq!(
        &*catalog.model(Tier::Strong).invoke_id,
        "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
    );
    assert_eq!(
        &*catalog.model(Tier::Fast).invoke_id,
        "us.anthropic.claude-3-haiku-20240307-v1:0"
    );
    assert_eq!(
        catalog.model(Tier::Fast).prices,
        Prices {
            input: 250,
            output: 1_250
        }
    );
    assert_eq!(
        catalog.model(Tier::Strong).prices,
        Prices {
            input: 3_000,
            output: 15_000
        }
    );
    assert_eq!(config.bedrock.default_deadline, Duration::from_secs(120));
    assert_eq!(
        config.server.keepalive_interval,
        Some(Duration::from_secs(60))
    );
    assert!(config.deprecations().is_empty());
}

#[test]
fn the_geography_picks_the_profiles_unless_on_demand() {
    let ids = |file: &str| {
        let config = load_str(file, &[]).expect("valid");
        let id = |tier| config.catalog.model(tier).invoke_id.to_string();
        (config.bedrock.geography, id(Tier::Strong), id(Tier::Fast))
    };
    assert_eq!(
        ids("[bedrock]\nregion = \"ap-northeast-1\"\n[models.fast]\non_demand = true\n"),
        (
            Geography::Apac,
            "apac.anthropic.claude-3-5-sonnet-20241022-v2:0".to_owned(),
            "anthropic.claude-3-haiku-20240307-v1:0".to_owned()
        )
    );
    assert_eq!(
        ids(
            "[bedrock]\nregion = \"eu-central-1\"\n[models.strong]\nid = \"anthropic.claude-3-7-sonnet-20250219-v1:0\"\nprofile_geographies = [\"eu\", \"us\"]\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\nmax_output_tokens = 8192\n"
        ),
        (
            Geography::Eu,
            "eu.anthropic.claude-3-7-sonnet-20250219-v1:0".to_owned(),
            "eu.anthropic.claude-3-haiku-20240307-v1:0".to_owned()
        )
    );
}

#[test]
fn env_overrides_file() {
    let config = load_str(
        "[bedrock]\nregion = \"us-west-2\"\n",
        &[
            ("ROUTER__BEDROCK__ENDPOINT_URL", "http://127.0.0.1:8080"),
            ("ROUTER__ROUTING__THRESHOLD", "0.4"),
            ("ROUTER__SERVER__LISTEN", "127.0.0.1:7000"),
            ("UNRELATED", "x"),
        ],
    )
    .expect("valid");
    assert_eq!(config.bedrock.region, "us-west-2");
    assert_eq!(
        config.bedrock.endpoint_url.as_deref(),
        Some("http://127.0.0.1:8080")
    );
    assert_eq!(config.routing.threshold, Some(0.4));
    assert_eq!(
        config.server.listen,
        SocketAddr::from(([127, 0, 0, 1], 7000))
    );
}

#[test]
fn eu_without_explicit_strong_model_is_a_clear_error() {
    let err = load_str("[bedrock]\nregion = \"eu-central-1\"\n", &[]).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("models.strong.profile_geographies"), "{text}");
    assert!(text.contains("\"eu\""), "{text}");
}

#[test]
fn a_file_overrides_one_field_of_a_default_model() {
    let config = load_str("[models.fast]\ninput_usd_per_mtok = 0.3\n", &[]).expect("valid");
    let fast = config.catalog.model(Tier::Fast);
    assert_eq!(fast.prices.input, 300);
    assert_eq!(&*fast.invoke_id, format!("us.{}", RawModel::haiku_3().id));
    assert_eq!(fast.max_output_tokens, 4096);
}

#[test]
fn fallback_regions_default_to_a_partner_in_the_geography() {
    let regions = |file: &str| load_str(file, &[]).expect("valid").bedrock.regions();
    assert_eq!(regions(""), ["us-east-1", "us-west-2"]);
    assert_eq!(
        regions("[bedrock]\nregion = \"us-west-2\"\n"),
        ["us-west-2", "us-east-1"]
    );
    assert_eq!(
        regions("[bedrock]\nregion = \"ap-southeast-1\"\n"),
        ["ap-southeast-1", "ap-northeast-1"]
    );
    assert_eq!(regions("[bedrock]\nfallback_regions = []\n"), ["us-east-1"]);
    assert_eq!(
        regions("[bedrock]\nfallback_regions = [\"us-east-2\", \"us-west-2\"]\n"),
        ["us-east-1", "us-east-2", "us-west-2"]
    );
}

#[test]
fn target_share_precedence_is_caller_then_default_then_routing() {
    let config = load_str(
        "[routing]\ntarget_strong_share = 0.5\n\
         [callers.batch]\ntarget_strong_share = 0.1\n\
         [callers.default]\ntarget_strong_share = 0.3\n\
         [callers.billing]\n",
        &[],
    )
    .expect("valid");
    let routing = &config.routing;
    assert_eq!(routing.target_strong_share("batch"), Some(0.1));
    assert_eq!(routing.target_strong_share("billing"), Some(0.3));
    assert_eq!(routing.target_strong_share("anyone"), Some(0.3));
    let named: Vec<_> = routing.named_callers().collect();
    assert_eq!(
        named,
        [
            ("batch".to_owned(), Some(0.1)),
            ("billing".to_owned(), Some(0.3))
        ]
    );
    let config =
        load_str("[routing]\ntarget_strong_share = 0.5\n[callers.x]\n", &[]).expect("valid");
    assert_eq!(config.routing.target_strong_share("x"), Some(0.5));
    assert_eq!(config.routing.target_strong_share("y"), Some(0.5));
    let fixed = load_str("[callers.x]\n", &[]).expect("valid").routing;
    assert_eq!(fixed.target_strong_share("x"), None);
    assert_eq!(fixed.target_strong_share(DEFAULT_CALLER), None);
}

#[test]
fn env_sets_a_callers_target_share() {
    let config = load_str(
        "[callers.batch]\ntarget_strong_share = 0.1\n",
        &[
            ("ROUTER__CALLERS__BATCH__TARGET_STRONG_SHARE", "0.25"),
            ("ROUTER__CALLERS__ETL__TARGET_STRONG_SHARE", "0.4"),
            ("ROUTER__ROUTING__SHARE_WINDOW", "500"),
        ],
    )
    .expect("valid");
    assert_eq!(config.routing.target_strong_share("batch"), Some(0.25));
    assert_eq!(config.routing.target_strong_share("etl"), Some(0.4));
    assert_eq!(config.routing.share.window, 500);
    assert_eq!(config.routing.share.warmup, 100);
}

#[test]
fn share_errors_name_the_key_and_the_range() {
    let message =
        |file: &str, env: &[(&str, &str)]| load_str(file, env).expect_err(file).to_string();
    assert_eq!(
        message("[callers.batch]\ntarget_strong_share = 1.5\n", &[]),
        "config field `callers.batch.target_strong_share`: 1.5 is outside [0, 1]"
    );
    assert_eq!(
        message("", &[("ROUTER__CALLERS__ETL__TARGET_STRONG_SHARE", "-0.1")]),
        "config field `callers.etl.target_strong_share` (set by ROUTER__CALLERS__ETL__TARGET_STRONG_SHARE): -0.1 is outside [0, 1]"
    );
    assert_eq!(
        message("[routing]\ntarget_strong_share = nan\n", &[]),
        "config field `routing.target_strong_share`: NaN is outside [0, 1]"
    );
    let unknown = message("[callers.batch]\ntarget_share = 0.3\n", &[]);
    assert!(
        unknown.contains("unknown field `target_share`"),
        "{unknown}"
    );
    let not_a_table = message("[callers]\nbatch = 0.3\n", &[]);
    assert!(not_a_table.contains("callers"), "{not_a_table}");
}

#[test]
fn invalid_fields_are_named() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("[routing]\nthreshold = 1.5\n", &[], "routing.threshold"),
        (
            "[bedrock]\nregion = \"sa-east-1\"\n",
            &[],
            "bedrock.geography",
        ),
        (
            "",
            &[("ROUTER__BEDROCK__ENDPOINT_URL", "localhost:1")],
            "bedrock.endpoint_url",
        ),
        (
            "[models.fast]\ninput_usd_per_mtok = -1.0\nid = \"x\"\nprofile_geographies = [\"us\"]\n",
            &[],
            "models.fast.input_usd_per_mtok",
        ),
        ("[models.fast]\nid = \"\"\n", &[], "models.fast.id"),
        ("[server]\nlisten = \"nope\"\n", &[], "server.listen"),
        ("[bedrock]\nregoin = \"us-east-1\"\n", &[], "regoin"),
        (
            "[bedrock]\nfallback_regions = [\"eu-west-1\"]\n",
            &[],
            "bedrock.fallback_regions[0]",
        ),
        (
            "[bedrock]\nfallback_regions = [\"us-east-1\"]\n",
            &[],
            "bedrock.fallback_regions[0]",
        ),
        (
            "[resilience]\nmax_attempts = 0\n",
            &[],
            "resilience.max_attempts",
        ),
        (
            "[resilience]\nretry_budget_ratio = -1.0\n",
            &[],
            "resilience.retry_budget_ratio",
        ),
        (
            "[resilience]\nbackoff_base_ms = 5000\n",
            &[],
            "resilience.backoff_base_ms",
        ),
        (
            "[resilience]\nmax_ejected_percent = 101\n",
            &[],
            "resilience.max_ejected_percent",
        ),
        (
            "[server]\nmax_concurrency = 0\n",
            &[],
            "server.max_concurrency",
        ),
        (
            "[server]\nmax_route_concurrency = 0\n",
            &[],
            "server.max_route_concurrency",
        ),
        (
            "[server]\nidle_timeout_ms = 0\n",
            &[],
            "server.idle_timeout_ms",
        ),
        (
            "[server]\nhttp2_window_bytes = 1024\n",
            &[],
            "server.http2_window_bytes",
        ),
        (
            "[server]\nmax_inflight_request_bytes = 1024\n",
            &[],
            "server.max_inflight_request_bytes",
        ),
        ("[limits]\nmax_messages = 0\n", &[], "limits.max_messages"),
        (
            "[bedrock]\nstream_idle_timeout_ms = 0\n",
            &[],
            "bedrock.stream_idle_timeout_ms",
        ),
        (
            "[bedrock]\ngeography = \"apac\"\n",
            &[],
            "bedrock.geography",
        ),
        (
            "[routing]\nshare_window = 70000\n",
            &[],
            "routing.share_window",
        ),
        (
            "[routing]\nshare_window = 50\n",
            &[],
            "routing.share_warmup",
        ),
        ("[routing]\nshare_warmup = 0\n", &[], "routing.share_warmup"),
        (
            "[callers.\"\"]\ntarget_strong_share = 0.5\n",
            &[],
            "callers.",
        ),
        (
            "[callers.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
            &[],
            "callers.aaaa",
        ),
    ];
    for (file, env, field) in cases {
        let err = load_str(file, env).expect_err(file);
        assert!(err.to_string().contains(field), "{file}: {err}");
    }
}

fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
    match result {
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("not a check error: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn every_problem_is_reported_at_once_with_its_key_and_variable() {
    let result = load_str(
        "[server]\nmax_connections = 0\n[routing]\nthreshold = 1.5\n",
        &[("ROUTER__CALLERS__BATCH__TARGET_STRONG_SHARE", "2")],
    );
    let text = result.as_ref().err().map(ToString::to_string);
    let lines: Vec<String> = problems(result).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "config field `server.max_connections`: must be at least 1",
            "config field `routing.threshold`: 1.5 is outside [0, 1]",
            "config field `callers.batch.target_strong_share` (set by ROUTER__CALLERS__BATCH__TARGET_STRONG_SHARE): 2 is outside [0, 1]",
        ]
    );
    assert_eq!(
        text.as_deref(),
        Some(
            "3 config fields are invalid:\n  config field `server.max_connections`: must be at least 1\n  config field `routing.threshold`: 1.5 is outside [0, 1]\n  config field `callers.batch.target_strong_share` (set by ROUTER__CALLERS__BATCH__TARGET_STRONG_SHARE): 2 is outside [0, 1]"
        )
    );
}

#[test]
fn a_caller_named_by_a_variable_is_attributed_to_it() {
    let name = "a".repeat(MAX_CALLER_LEN + 1);
    let var = format!("ROUTER__CALLERS__{name}__TARGET_STRONG_SHARE");
    let found = problems(load_str("", &[(&var, "0.5")]));
    assert_eq!(
        found,
        [Problem {
            key: format!("callers.{name}"),
            message: format!("a caller name has 1 to {MAX_CALLER_LEN} characters"),
            origin: Some(format!("set by {var}")),
        }]
    );
}

#[test]
fn a_badly_typed_variable_is_named() {
    let err = load_str("", &[("ROUTER__SERVER__MAX_CONNECTIONS", "lots")]).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("set by ROUTER__SERVER__MAX_CONNECTIONS"),
        "{text}"
    );
    let err = load_str("", &[("ROUTER__SERVER__MAX_CONECTIONS", "5")]).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("set by ROUTER__SERVER__MAX_CONECTIONS") && text.contains("max_conections"),
        "{text}"
    );
}

#[test]
fn flags_apply_over_the_environment_before_the_check() {
    let flags = |threshold: f64| {
        Overrides::default()
            .flag("--threshold", "routing.threshold", Some(threshold))
            .flag("--listen", "server.listen", None::<SocketAddr>)
    };
    let env = [("ROUTER__ROUTING__THRESHOLD", "0.2")];
    let config = load_with("", &env, &flags(0.7)).expect("valid");
    assert_eq!(config.routing.threshold, Some(0.7));
    assert_eq!(
        config.server.listen,
        SocketAddr::from(([0, 0, 0, 0], 50051))
    );
    let err = load_with("", &env, &flags(1.5)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "config field `routing.threshold` (set by --threshold): 1.5 is outside [0, 1]"
    );
}

#[test]
fn a_fallback_applies_only_where_no_file_variable_or_flag_sets_the_key() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 50051));
    let fallback = || Overrides::default().fallback("--simulate", "server.listen", Some(loopback));
    let config = load_with("", &[], &fallback()).expect("valid");
    assert_eq!(config.server.listen, loopback);
    let config =
        load_with("[server]\nlisten = \"0.0.0.0:7000\"\n", &[], &fallback()).expect("valid");
    assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], 7000)));
    let config = load_with(
        "",
        &[("ROUTER__SERVER__LISTEN", "0.0.0.0:7001")],
        &fallback(),
    )
    .expect("valid");
    assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], 7001)));
    let flagged = Overrides::default()
        .flag(
            "--listen",
            "server.listen",
            Some(SocketAddr::from(([0, 0, 0, 0], 7002))),
        )
        .fallback("--simulate", "server.listen", Some(loopback));
    let config = load_with("", &[], &flagged).expect("valid");
    assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], 7002)));
    // Another key of the same section set elsewhere leaves the fallback in force.
    let config = load_with("[server]\nmax_connections = 5\n", &[], &fallback()).expect("valid");
    assert_eq!(config.server.listen, loopback);
}

#[test]
fn an_optional_client_certificate_needs_a_client_ca() {
    let tls = "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
    let config = load_str(tls, &[]).expect("valid");
    assert_eq!(
        config.server.tls.expect("tls").client_cert,
        ClientCert::Required
    );
    let text = load_str(&format!("{tls}client_cert = \"optional\"\n"), &[])
        .expect_err("refused")
        .to_string();
    assert!(text.contains("server.tls.client_cert"), "{text}");
    assert!(text.contains("client_ca_file is unset"), "{text}");
    let config = load_str(
        &format!("{tls}client_ca_file = \"ca.pem\"\nclient_cert = \"optional\"\n"),
        &[],
    )
    .expect("valid");
    assert_eq!(
        config.server.tls.expect("tls").client_cert,
        ClientCert::Optional
    );
    let text = load_str(&format!("{tls}client_cert = \"sometimes\"\n"), &[])
        .expect_err("refused")
        .to_string();
    assert!(text.contains("client_cert"), "{text}");
}

#[test]
fn durations_are_capped_at_one_day() {
    let mut raw = RawConfig::default();
    let (server, bedrock, resilience) = (&mut raw.server, &mut raw.bedrock, &mut raw.resilience);
    for ms in [
        &mut server.header_read_timeout_ms,
        &mut server.request_read_timeout_ms,
        &mut server.idle_timeout_ms,
        &mut server.keepalive_interval_ms,
        &mut server.shutdown_delay_ms,
        &mut server.drain_timeout_ms,
        &mut bedrock.connect_timeout_ms,
        &mut bedrock.default_deadline_ms,
        &mut bedrock.stream_idle_timeout_ms,
        &mut resilience.backoff_base_ms,
        &mut resilience.backoff_max_ms,
        &mut resilience.breaker_cooldown_ms,
    ] {
        *ms = u64::MAX;
    }
    let keys: Vec<String> = problems(Config::try_from(raw))
        .into_iter()
        .map(|p| {
            assert_eq!(
                p.message,
                "18446744073709551615 is above 86400000 (one day), the longest allowed"
            );
            p.key
        })
        .collect();
    assert_eq!(
        keys,
        [
            "server.keepalive_interval_ms",
            "server.header_read_timeout_ms",
            "server.request_read_timeout_ms",
            "server.idle_timeout_ms",
            "server.shutdown_delay_ms",
            "server.drain_timeout_ms",
            "bedrock.connect_timeout_ms",
            "bedrock.default_deadline_ms",
            "bedrock.stream_idle_timeout_ms",
            "resilience.backoff_base_ms",
            "resilience.backoff_max_ms",
            "resilience.breaker_cooldown_ms",
        ]
    );
    let err = load_str(
        "[bedrock]\ndefault_deadline_ms = 9223372036854775807\n",
        &[],
    )
    .expect_err("refused");
    assert!(
        err.to_string().starts_with(
            "config field `bedrock.default_deadline_ms`: 9223372036854775807 is above"
        ),
        "{err}"
    );
    let longest = load_str(
        &format!("[bedrock]\ndefault_deadline_ms = {MAX_DURATION_MS}\n"),
        &[],
    )
    .expect("one day is allowed");
    let deadline = std::time::Instant::now() + longest.bedrock.default_deadline;
    assert!(deadline > std::time::Instant::now());
}

#[test]
fn the_old_name_of_the_default_deadline_still_works_with_a_warning() {
    let config = load_str("[bedrock]\ncall_timeout_ms = 5000\n", &[]).expect("valid");
    assert_eq!(config.bedrock.default_deadline, Duration::from_secs(5));
    let [warning] = config.deprecations() else {
        panic!("{:?}", config.deprecations());
    };
    assert!(
        warning.contains("`bedrock.call_timeout_ms`")
            && warning.contains("`bedrock.default_deadline_ms`")
            && warning.contains("router.toml"),
        "{warning}"
    );

    let config = load_str("", &[("ROUTER__BEDROCK__CALL_TIMEOUT_MS", "7000")]).expect("valid");
    assert_eq!(config.bedrock.default_deadline, Duration::from_secs(7));
    assert!(
        config.deprecations()[0].contains("set by ROUTER__BEDROCK__CALL_TIMEOUT_MS"),
        "{:?}",
        config.deprecations()
    );
    let config = load_str("", &[("ROUTER__BEDROCK__DEFAULT_DEADLINE_MS", "9000")]).expect("valid");
    assert_eq!(config.bedrock.default_deadline, Duration::from_secs(9));
    assert!(config.deprecations().is_empty());

    let text = load_str("[bedrock]\ncall_timeout_ms = 0\n", &[])
        .expect_err("refused")
        .to_string();
    assert_eq!(
        text,
        "config field `bedrock.default_deadline_ms` (set as `bedrock.call_timeout_ms`): must be above 0"
    );
}

#[test]
fn both_names_of_the_default_deadline_are_an_error() {
    let both = |file: &str, env: &[(&str, &str)]| {
        problems(load_str(file, env))
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        both(
            "[bedrock]\ncall_timeout_ms = 5000\ndefault_deadline_ms = 6000\n",
            &[]
        ),
        [
            "config field `bedrock.call_timeout_ms`: is the deprecated name of `bedrock.default_deadline_ms`, which is set too; keep only `bedrock.default_deadline_ms`"
        ]
    );
    assert_eq!(
        both(
            "[bedrock]\ndefault_deadline_ms = 6000\n[server]\nmax_concurrency = 0\n",
            &[("ROUTER__BEDROCK__CALL_TIMEOUT_MS", "5000")]
        ),
        [
            "config field `bedrock.call_timeout_ms` (set by ROUTER__BEDROCK__CALL_TIMEOUT_MS): is the deprecated name of `bedrock.default_deadline_ms`, which is set too; keep only `bedrock.default_deadline_ms`",
            "config field `server.max_concurrency`: must be at least 1",
        ]
    );
}

#[test]
fn quality_settings_are_checked_with_their_keys() {
    let message =
        |file: &str, env: &[(&str, &str)]| load_str(file, env).expect_err(file).to_string();
    assert_eq!(
        message("[quality]\nduel_rate = 1.5\n", &[]),
        "config field `quality.duel_rate`: 1.5 is outside [0, 1]"
    );
    assert_eq!(
        message("[quality]\nstore = \"s3://bucket\"\n", &[]),
        "config field `quality.store`: \"s3://bucket\" is neither file:PATH nor a redis:// URL"
    );
    let tls = message("[quality]\nstore = \"rediss://h:6380\"\n", &[]);
    assert!(tls.contains("not built into"), "{tls}");
    assert_eq!(
        message("[quality]\nwindow = 10\nmin_duels = 20\n", &[]),
        "config field `quality.min_duels`: 20 is outside [1, quality.window = 10]"
    );
    assert_eq!(
        message("", &[("ROUTER__ROUTING__TARGET_QUALITY", "2")]),
        "config field `routing.target_quality` (set by ROUTER__ROUTING__TARGET_QUALITY): 2 is outside [0, 1]"
    );
    assert_eq!(
        message("[routing]\ntarget_quality = 0.9\n", &[]),
        "config field `routing.target_quality`: steers target strong shares, and none is set: set \
         routing.target_strong_share (or a caller's), the share used until quality.min_duels duels"
    );
    for shares in [
        "[routing]\ntarget_quality = 0.9\ntarget_strong_share = 0.3\n",
        "[routing]\ntarget_quality = 0.9\n[callers.batch]\ntarget_strong_share = 0.3\n",
    ] {
        let config = load_str(shares, &[]).unwrap();
        assert_eq!(config.routing.target_quality, Some(0.9), "{shares}");
    }
    let config = load_str(
        "[quality]\nduel_rate = 0.01\nstore = \"redis://user:secret@127.0.0.1:6379/0\"\n",
        &[],
    )
    .unwrap();
    let store = config.quality.store.expect("a store");
    assert_eq!(
        store,
        StoreLocation::Redis("redis://user:secret@127.0.0.1:6379/0".to_owned())
    );
    assert_eq!(store.to_string(), "redis://***@127.0.0.1:6379/0");
    let defaults = load_str("", &[]).unwrap();
    assert_eq!(defaults.quality.duel_rate, 0.0);
    assert_eq!(defaults.quality.store, None);
    assert_eq!(defaults.routing.target_quality, None);
}

/// SHA-256 of "token-one", as `printf %s token-one | sha256sum` prints it.
const TOKEN_ONE_SHA256: &str = "75c5c10f256c75b650c6ffc2e83c6588af02766efd2de28f4de34547006e8d1a";

#[test]
fn callers_are_recognised_by_token_or_san_and_inherit_the_default_policy() {
    let dir = std::env::temp_dir().join(format!("router-token-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("search.sha256");
    // A mounted secret ends in a newline; upper-case hex is as good as lower.
    std::fs::write(&secret, format!("{}\n", TOKEN_ONE_SHA256.to_uppercase())).unwrap();
    let config = load_str(
        &format!(
            r#"
[server.tls]
cert_file = "/etc/router/tls.crt"
key_file = "/etc/router/tls.key"
client_ca_file = "/etc/router/ca.crt"
[auth]
required = true
[callers.default]
allow_force = false
usd_per_day = 5.0
requests_per_second = 2.5
[callers.billing]
san = "spiffe://prod/billing"
usd_per_day = 50.0
[callers.search]
token_sha256_file = "{}"
allow_force = true
on_store_down = "closed"
[limits]
redis_url = "redis://127.0.0.1:6379"
"#,
            secret.display()
        ),
        &[],
    )
    .expect("valid");
    let _ = std::fs::remove_dir_all(&dir);
    let callers = &config.callers;
    assert!(callers.required);
    let digest = crate::caller::TokenDigest::from_hex(TOKEN_ONE_SHA256).unwrap();
    assert_eq!(
        callers.by_token_sha256(&digest).map(|n| &**n),
        Some("search")
    );
    assert_eq!(
        callers.by_san("spiffe://prod/billing").map(|n| &**n),
        Some("billing")
    );
    let billing = callers.resolve(Some("billing"), "").unwrap();
    assert_eq!(billing.key, "callers.billing");
    // Its own budget; the default's force rule and rate (with the rate's burst, rounded up).
    assert_eq!(billing.policy.usd_per_day, Some(50.0));
    assert!(!billing.policy.allow_force);
    assert_eq!(billing.policy.requests_per_second, Some(2.5));
    assert_eq!(billing.policy.burst, 3);
    let search = callers.resolve(Some("search"), "search").unwrap();
    assert!(search.policy.allow_force);
    assert_eq!(search.policy.usd_per_day, Some(5.0));
    assert_eq!(
        search.policy.on_store_down,
        crate::caller::StoreDown::Closed
    );
    let tls = config.server.tls.as_ref().expect("tls");
    assert_eq!(tls.reload_interval, Some(Duration::from_secs(30)));
    assert_eq!(
        config.limit_store.redis_url.as_deref(),
        Some("redis://127.0.0.1:6379")
    );
    assert_eq!(config.limit_store.lease, Duration::from_millis(100));
    // The checked config's debug form names no digest.
    assert!(!format!("{config:?}").to_lowercase().contains("75c5c10f"));
    let with_password = load_str(
        "[limits]\nredis_url = \"redis://user:hunter2@cache:6379\"\n",
        &[],
    )
    .expect("valid");
    let shown = format!("{:?}", with_password.limit_store);
    assert!(shown.contains("redis://***@cache:6379"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn bad_credentials_and_policies_are_named_and_never_echo_a_digest() {
    let found = problems(load_str(
        &format!(
            r#"
[auth]
required = true
[callers.default]
token_sha256 = "{TOKEN_ONE_SHA256}"
[callers.a]
token_sha256 = "{TOKEN_ONE_SHA256}"
[callers.b]
token_sha256 = "{TOKEN_ONE_SHA256}"
[callers.c]
token_sha256 = "not-hex-75c5c10f"
[callers.d]
token_sha256 = "{TOKEN_ONE_SHA256}"
token_sha256_file = "/x"
[callers.e]
token_sha256_file = "/no/such/secret"
[callers.f]
san = "f.internal"
degrade_at = 1.5
requests_per_second = 0.0
usd_per_month = -1.0
max_quality_bias = 2.0
[callers.other]
[limits]
redis_url = "rediss://secret@cache:6380"
lease_ms = 60000
"#
        ),
        &[],
    ));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "callers.default",
        "callers.b.token_sha256",
        "callers.c.token_sha256",
        "callers.d.token_sha256_file",
        "callers.e.token_sha256_file",
        "callers.f.san",
        "callers.f.degrade_at",
        "callers.f.requests_per_second",
        "callers.f.usd_per_month",
        "callers.f.max_quality_bias",
        "callers.other",
        "limits.redis_url",
        "limits.lease_ms",
    ] {
        assert!(keys.contains(&key), "{key} not in {found:#?}");
    }
    let text = format!("{found:?}");
    assert!(!text.contains("75c5c10f"), "{text}");
    assert!(!text.contains("secret@"), "{text}");
}

#[test]
fn auth_required_with_no_credentials_anywhere_is_refused() {
    let found = problems(load_str("[auth]\nrequired = true\n", &[]));
    assert_eq!(
        found.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["auth.required"]
    );
}
