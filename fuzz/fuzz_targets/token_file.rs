//! Token files / `KVTIER_TOKENS` and the `authorization` header: parsing
//! must never panic, and a parsed table must answer lookups of any token.
#![no_main]

use kvtier_security::{Authenticator, TokenTable};
use libfuzzer_sys::fuzz_target;
use tonic::metadata::{MetadataMap, MetadataValue};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (table_text, token) = text.split_once('\u{0}').unwrap_or((&text, "x"));
    if let Ok(table) = TokenTable::parse(table_text) {
        if let Some(p) = table.find(token) {
            let _ = p.access(token);
        }
    }
    if let Ok(auth) = Authenticator::from_text(table_text) {
        let mut md = MetadataMap::new();
        if let Ok(v) = MetadataValue::try_from(token) {
            md.insert("authorization", v);
        }
        let _ = auth.authenticate(&md);
    }
});
