pub mod backend;
pub mod cache;
pub mod cli;
pub mod demo;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod csi;
