//! ferry-steps: the clone workflow (work in progress; see ARCHITECTURE.md).
