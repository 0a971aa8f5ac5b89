//! What the router learns about its own decisions: label rows from duels and feedback, in
//! the one format the label stores write and `train --labels` reads. PURE: the stores (files,
//! Redis) and the duels' calls live in the service crate.

pub mod estimate;
pub mod judge;
pub mod label;
pub mod target;
