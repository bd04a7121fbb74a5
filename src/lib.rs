pub mod backend;
pub mod cache;
