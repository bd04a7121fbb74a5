pub mod backend;
pub mod cache;
pub mod cli;
pub mod csi;
pub mod demo;
pub mod fs;
pub mod fuse;
pub mod mount;
