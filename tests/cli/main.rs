//! The command line: arguments, the demo, doctor, and the parsers under
//! fuzzing.
//!
//! One binary per area, so the crate is linked once for all of its
//! suites; each module is one former test file, with its own doc.

#[path = "../common/mod.rs"]
mod common;
#[path = "../support_nfs/mod.rs"]
mod support_nfs;
#[path = "../support_s3/mod.rs"]
mod support_s3;

mod args;
mod demo;
mod doctor;
mod fuzz_parsers;
