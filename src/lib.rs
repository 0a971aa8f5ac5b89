//! prompt-router: a gRPC front door to Amazon Bedrock that scores each conversation's
//! complexity and sends it to the cheapest Claude tier able to answer it, reporting the
//! decision, the cost against an all-strong baseline and the latency it added.
//!
//! `classify`, `policy`, `operating`, `cost`, `decide`, `request`, `resilience`, `train`, `eval` and
//! `calibrate` are pure (none of them imports the generated `pb` code: the server converts at
//! the edge); `backend` is the only code that talks to Bedrock; `server` and `quality` (the duels) are the
//! only code that records metrics, and `server` the only code that builds gRPC statuses.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod labels;
pub mod limits;
pub mod load;
pub mod logfmt;
pub mod pb;
pub mod protocol;
pub mod quality;
pub mod reload;
pub mod server;
pub mod setup;
pub mod telemetry;
