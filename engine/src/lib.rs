//! ferry-engine: the generic durable step runner.
