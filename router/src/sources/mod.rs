//! Event ingestion (see the crate docs).
