//! prompt-router's decision core: what a request is, how hard it looks, which tier answers it,
//! what that costs, how retries and fallbacks are planned, and the checked configuration.
//!
//! Everything here is pure: plain values in, plain values out, so the decision can be tested
//! with tables and properties and measured without a runtime. What must not be here — an
//! async runtime, gRPC (tonic, the generated `pb` types), the AWS SDK, metrics, I/O beyond
//! reading a file it is given — is kept out by this crate's `Cargo.toml`, and
//! `tests/architecture.rs` fails if one arrives through a dependency. The service crate
//! converts the wire types into [`request::ChatRequest`] at its edge.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod calibrate;
pub mod caller;
pub mod catalog;
pub mod classify;
pub mod config;
pub mod cost;
pub mod decide;
pub mod eval;
pub mod limits;
pub mod operating;
pub mod policy;
pub mod quality;
pub mod request;
pub mod resilience;
pub mod train;
