//! The one integration test binary: topic modules over real files, the real
//! CLI and DuckDB/pyarrow as oracles.

mod api;
mod bad_inputs;
mod buckets;
mod cli;
mod compressed;
mod crash;
mod dedup;
mod delta;
mod end_to_end;
mod evolution;
mod gaps;
mod harness;
mod identity;
mod kafka;
mod lookups;
mod memory;
mod model;
mod partitions;
mod postgres;
mod quality;
mod readers;
mod reliability;
mod s3;
mod sequence;
mod sorted;
#[cfg(feature = "spark")]
mod spark;
mod state;
mod timezones;
