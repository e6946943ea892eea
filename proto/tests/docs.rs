//! docs/protocol.md lists every error code with its number and every limit with its default.

use quiver_proto::{ErrorCode, Limits};

fn protocol_md() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_error_code_is_documented() {
    let doc = protocol_md();
    for &code in ErrorCode::ALL {
        let row = format!("| {} | {:?} |", code.to_u32(), code);
        assert!(doc.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
}

#[test]
fn every_limit_default_is_documented() {
    let doc = protocol_md().replace(',', "");
    let limits = Limits::default();
    let json = format!("{limits:?}");
    // "Limits { max_frame: 65536, ... }" -> pairs
    let fields = json.trim_start_matches("Limits { ").trim_end_matches(" }");
    for pair in fields.split(", ") {
        let (name, value) = pair.split_once(": ").expect("name: value");
        assert!(doc.contains(&format!("`{name}` {value}")), "docs/protocol.md lacks `{name}` {value}");
    }
}
