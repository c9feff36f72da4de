//! Admin HTTP routes (feature `axum`).
