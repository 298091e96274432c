//! ferry-store: the durable event log.
