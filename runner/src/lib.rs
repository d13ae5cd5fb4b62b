//! `cargo sandbox-test`: run every test of a Rust workspace in its own
//! throwaway Linux container and report the resource usage the kernel
//! measured for it.

pub mod budget;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod container;
pub mod doctor;
pub mod libtest;
pub mod outcome;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod supervise;
