//! `cargo sandbox-test`: run every test of a Rust workspace in its own
//! throwaway Linux container and report the resource usage the kernel
//! measured for it.

pub mod config;
