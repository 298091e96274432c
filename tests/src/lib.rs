//! Helpers shared by the cross-crate suites in `tests/tests/`.
