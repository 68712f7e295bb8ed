//! End-to-end tests live in `tests/tests/`; this crate holds no code of its own.
