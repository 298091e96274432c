//! ferry-sim: a Kubernetes API server simulator (work in progress; see ARCHITECTURE.md).
