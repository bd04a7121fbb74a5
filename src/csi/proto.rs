//! Code generated from proto/csi.proto (CSI spec v1.12.0) by build.rs.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("csi.v1");
