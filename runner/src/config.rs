//! Configuration file parsing.
