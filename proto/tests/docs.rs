//! docs/protocol.md is the protocol's specification; these tests keep it true to the code.
//!
//! - Every wire type has a table under a heading ``#### `Name` (enum)`` or ``#### `Name` (struct)`` whose first
//!   three columns are the variant number (or field position), the variant (or field) name and its fields (or
//!   type), exactly as [`serde_reflection`] traces them from the serde derives: the numbers are the ones postcard
//!   puts on the wire. A variant or field added, removed, renamed, retyped or moved fails
//!   [`wire_type_tables_match_the_code`]. After a deliberate change, `QUIVER_WRITE_DOCS=1 cargo test -p
//!   quiver-proto --test docs` rewrites those three columns (keeping the others, matched by name) and adds a table
//!   for a new type.
//! - The tick header table (`TickHeader`, not a serde type) lists its fields in encoding order.
//! - Every error code has its row, every limit its default, every worked example the bytes of its vector, every
//!   named ceiling, floor and tick size the value the code has.

use std::{collections::BTreeMap, path::PathBuf};

use quiver_proto::{ErrorCode, Limits, TickHeader};
use serde_json::Value;
use serde_reflection::{ContainerFormat, Format, Named, Registry, VariantFormat};

const REGENERATE: &str = "QUIVER_WRITE_DOCS=1 cargo test -p quiver-proto --test docs";
const STRUCT: &str = "(struct)";
const ENUM: &str = "(enum)";
const HEADER: &str = "(datagram header)";

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

fn protocol_md() -> String {
    let path = doc_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ── The document's tables ──────────────────────────────────────────────────────────────────────────────────────

/// A markdown table and the heading it stands under.
#[derive(Debug)]
struct Table {
    heading: String,
    header: Vec<String>,
    /// Index of the separator line (`|---|`); the rows follow it.
    separator: usize,
    /// (line index, cells).
    rows: Vec<(usize, Vec<String>)>,
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|cell| cell.trim().to_string()).collect()
}

fn tables(doc: &str) -> Vec<Table> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
        } else if line.starts_with('|') && i + 1 < lines.len() {
            let (header, separator) = (cells(line), i + 1);
            let mut rows = Vec::new();
            i += 2;
            while i < lines.len() && lines[i].starts_with('|') {
                rows.push((i, cells(lines[i])));
                i += 1;
            }
            out.push(Table { heading: heading.clone(), header, separator, rows });
            continue;
        }
        i += 1;
    }
    out
}

/// The tables of wire types, by type name: headings ``Name` (kind)`.
fn documented(tables: &[Table]) -> (BTreeMap<String, (&'static str, &Table)>, Vec<String>) {
    let mut found = BTreeMap::new();
    let mut problems = Vec::new();
    for table in tables {
        let Some((name, rest)) = table.heading.strip_prefix('`').and_then(|h| h.split_once('`')) else { continue };
        let Some(kind) = [STRUCT, ENUM, HEADER].into_iter().find(|kind| rest.trim() == *kind) else { continue };
        if found.insert(name.to_string(), (kind, table)).is_some() {
            problems.push(format!("`{name}` has two tables; keep one"));
        }
    }
    (found, problems)
}

// ── What the code says ─────────────────────────────────────────────────────────────────────────────────────────

/// A wire type as its table shows it: kind and rows of `[#, name, type or fields]`.
#[derive(Debug, PartialEq)]
struct Shape {
    kind: &'static str,
    rows: Vec<[String; 3]>,
}

#[path = "shared/registry.rs"]
mod shared_registry;
use shared_registry::registry;

/// `Result` keeps its type parameters in the document (the registry names it without them).
fn type_name(registry: &Registry, name: &str) -> String {
    if let Some(ContainerFormat::Enum(variants)) = registry.get(name).filter(|_| name == "Result") {
        let inner = |i: u32| match variants.get(&i).map(|v| &v.value) {
            Some(VariantFormat::NewType(format)) => type_text(registry, "", format),
            other => panic!("Result variant {i}: {other:?}"),
        };
        return format!("Result<{}, {}>", inner(0), inner(1));
    }
    name.to_string()
}

fn type_text(registry: &Registry, field: &str, format: &Format) -> String {
    match format {
        Format::TypeName(name) => type_name(registry, name),
        Format::Str => "string".into(),
        Format::Bytes => "bytes".into(),
        Format::Option(inner) => format!("Option<{}>", type_text(registry, field, inner)),
        Format::Seq(inner) => format!("Vec<{}>", type_text(registry, field, inner)),
        // ErrorCode has its own Serialize (a bare u32, `error_codes_are_u32s` checks), so the tracer sees a u32.
        // Every field named `code` is an ErrorCode; a u32 `code` that is not would be shown wrongly here.
        Format::U32 if field == "code" => "ErrorCode".into(),
        // bool, u32, u64, and any primitive not used yet (u8, i64, f32, unit ...) under its Rust name.
        other => format!("{other:?}").to_lowercase(),
    }
}

fn fields_text(registry: &Registry, fields: &[Named<Format>]) -> String {
    let fields: Vec<String> =
        fields.iter().map(|f| format!("{}: {}", f.name, type_text(registry, &f.name, &f.value))).collect();
    format!("{{ {} }}", fields.join(", "))
}

fn variant_text(registry: &Registry, variant: &VariantFormat) -> String {
    match variant {
        VariantFormat::Unit => "()".into(),
        VariantFormat::NewType(format) => type_text(registry, "", format),
        VariantFormat::Tuple(formats) => {
            let items: Vec<String> = formats.iter().map(|f| type_text(registry, "", f)).collect();
            format!("({})", items.join(", "))
        }
        VariantFormat::Struct(fields) => fields_text(registry, fields),
        VariantFormat::Variable(_) => panic!("an untraced variant: {variant:?}"),
    }
}

/// Every table the document must have, by type name.
fn shapes() -> BTreeMap<String, Shape> {
    let registry = registry();
    let row = |i: usize, name: &str, text: String| [i.to_string(), format!("`{name}`"), format!("`{text}`")];
    let mut shapes: BTreeMap<String, Shape> = registry
        .iter()
        .map(|(name, container)| {
            let shape = match container {
                ContainerFormat::Struct(fields) => Shape {
                    kind: STRUCT,
                    rows: fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| row(i, &f.name, type_text(&registry, &f.name, &f.value)))
                        .collect(),
                },
                ContainerFormat::Enum(variants) => Shape {
                    kind: ENUM,
                    rows: variants
                        .iter()
                        .map(|(i, v)| row(*i as usize, &v.name, variant_text(&registry, &v.value)))
                        .collect(),
                },
                other => panic!("{name} is a {other:?}: teach proto/tests/docs.rs how to document it"),
            };
            (type_name(&registry, name), shape)
        })
        .collect();
    // The tick header is encoded by hand (QUIC varints), not by serde: its fields, in order, from its Debug.
    let debug = format!("{:?}", TickHeader { channel_id: 0, seq: 0, sent_time_us: 0 });
    let fields = debug.trim_start_matches("TickHeader { ").trim_end_matches(" }");
    let rows = fields
        .split(", ")
        .enumerate()
        .map(|(i, pair)| {
            let name = pair.split_once(": ").map_or(pair, |(name, _)| name);
            [i.to_string(), format!("`{name}`"), "QUIC varint".to_string()]
        })
        .collect();
    shapes.insert("TickHeader".into(), Shape { kind: HEADER, rows });
    shapes
}

// ── Comparing and rewriting ────────────────────────────────────────────────────────────────────────────────────

fn render(rows: &[[String; 3]]) -> String {
    rows.iter().map(|r| format!("    | {} |\n", r.join(" | "))).collect()
}

fn problems(doc: &str, shapes: &BTreeMap<String, Shape>) -> Vec<String> {
    let tables = tables(doc);
    let (documented, mut problems) = documented(&tables);
    for (name, shape) in shapes {
        let Some((kind, table)) = documented.get(name) else {
            problems.push(format!("`{name}` {} has no table; it needs:\n{}", shape.kind, render(&shape.rows)));
            continue;
        };
        if *kind != shape.kind {
            problems.push(format!("`{name}` is documented as {kind} but is {}", shape.kind));
        }
        let rows: Vec<[String; 3]> = table
            .rows
            .iter()
            .map(|(_, cells)| std::array::from_fn(|i| cells.get(i).cloned().unwrap_or_default()))
            .collect();
        if rows != shape.rows {
            problems.push(format!(
                "`{name}` {}: the document says\n{}but the code says\n{}",
                shape.kind,
                render(&rows),
                render(&shape.rows)
            ));
        }
    }
    for name in documented.keys().filter(|name| !shapes.contains_key(*name)) {
        problems.push(format!("`{name}` has a table but is no wire type (any more): remove it by hand"));
    }
    problems
}

/// `doc` with every wire type's table rewritten from `shapes`: the first three columns from the code, the others
/// kept from the row of the same name (empty for a new row); a type without a table gets one at the end of the
/// Message reference section.
fn rewrite(doc: &str, shapes: &BTreeMap<String, Shape>) -> String {
    let tables = tables(doc);
    let (documented, _) = documented(&tables);
    let mut lines: Vec<String> = doc.lines().map(str::to_string).collect();
    let mut tables: Vec<(&String, &Table)> = documented.iter().map(|(name, (_, table))| (name, *table)).collect();
    tables.sort_by_key(|(_, table)| std::cmp::Reverse(table.separator));
    for (name, table) in tables {
        let Some(shape) = shapes.get(name) else { continue };
        let extra = table.header.len().saturating_sub(3);
        let rows = shape.rows.iter().map(|row| {
            let kept = table.rows.iter().find(|(_, cells)| cells.get(1) == Some(&row[1]));
            let rest: Vec<String> = match kept {
                Some((_, cells)) => cells.iter().skip(3).cloned().collect(),
                None => vec![String::new(); extra],
            };
            format!("| {} |", row.iter().chain(&rest).cloned().collect::<Vec<_>>().join(" | "))
        });
        let first = table.separator + 1;
        lines.splice(first..first + table.rows.len(), rows);
    }
    let missing: Vec<(&String, &Shape)> = shapes.iter().filter(|(name, _)| !documented.contains_key(*name)).collect();
    if !missing.is_empty() {
        let section = lines.iter().position(|l| l == "## Message reference").unwrap_or(lines.len());
        let end = (section + 1..lines.len()).find(|&i| lines[i].starts_with("## ")).unwrap_or(lines.len());
        let mut block = Vec::new();
        for (name, shape) in missing {
            let columns = if shape.kind == ENUM { "variant | fields" } else { "field | type" };
            block.push(format!("#### `{name}` {}", shape.kind));
            block.push(String::new());
            block.push(format!("| # | {columns} | meaning |"));
            block.push("|---|---|---|---|".into());
            block.extend(shape.rows.iter().map(|row| format!("| {} |  |", row.join(" | "))));
            block.push(String::new());
        }
        lines.splice(end..end, block);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[test]
fn wire_type_tables_match_the_code() {
    let shapes = shapes();
    let mut doc = protocol_md();
    if std::env::var_os("QUIVER_WRITE_DOCS").is_some_and(|v| v == "1") {
        doc = rewrite(&doc, &shapes);
        std::fs::write(doc_path(), &doc).unwrap_or_else(|e| panic!("writing docs/protocol.md: {e}"));
    }
    let problems = problems(&doc, &shapes);
    assert!(
        problems.is_empty(),
        "docs/protocol.md does not describe the wire types as the code has them:\n\n{}\nIf the change is deliberate \
         (a new protocol version: never reorder variants within one), regenerate the tables with `{REGENERATE}`, \
         then fill in the meaning of new rows.",
        problems.join("\n")
    );
}

#[test]
fn error_codes_are_u32s() {
    let codes = ErrorCode::ALL.iter().copied().chain([ErrorCode::Unknown(1000), ErrorCode::Unknown(u32::MAX)]);
    for code in codes {
        let as_code = postcard::to_allocvec(&code).unwrap_or_else(|e| panic!("{code:?}: {e}"));
        let as_u32 = postcard::to_allocvec(&code.to_u32()).unwrap_or_else(|e| panic!("{code:?}: {e}"));
        assert_eq!(as_code, as_u32, "{code:?} is not encoded as its number");
    }
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
    let doc = protocol_md();
    let tables = tables(&doc);
    let (documented, _) = documented(&tables);
    let (_, table) = documented.get("Limits").unwrap_or_else(|| panic!("docs/protocol.md has no `Limits` table"));
    let column = table.header.iter().position(|h| h == "default").unwrap_or_else(|| panic!("no default column"));
    let defaults = serde_json::to_value(Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    let defaults = defaults.as_object().unwrap_or_else(|| panic!("Limits is not a JSON object"));
    assert_eq!(table.rows.len(), defaults.len(), "the Limits table has a row per field");
    for (_, cells) in &table.rows {
        let name = cells[1].trim_matches('`');
        let in_doc = cells.get(column).map(|c| c.replace(',', "")).unwrap_or_default();
        let default = defaults.get(name).map(Value::to_string).unwrap_or_default();
        assert_eq!(in_doc, default, "docs/protocol.md: the default of `{name}`");
    }
}

/// `n` with a comma between thousands, as the docs write numbers.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[test]
fn named_ceilings_floors_and_tick_sizes_are_documented_as_the_code_has_them() {
    // (Lines joined: a phrase may wrap.)
    let doc = protocol_md().split_whitespace().collect::<Vec<_>>().join(" ");
    let expected = [
        format!("`Limits::MIN_FRAME` ({} KiB", Limits::MIN_FRAME >> 10),
        format!("`Limits::MAX_FRAME_CEILING` ({} MiB)", Limits::MAX_FRAME_CEILING >> 20),
        format!("`Limits::MAX_ROOMS_CEILING` ({})", thousands(Limits::MAX_ROOMS_CEILING as usize)),
        format!("{} bytes (`MAX_PORTABLE_PAYLOAD`", thousands(TickHeader::MAX_PORTABLE_PAYLOAD)),
        format!("{}-byte `MAX_PORTABLE_DATAGRAM`", thousands(quiver_proto::MAX_PORTABLE_DATAGRAM)),
        format!("portable {} bytes", thousands(quiver_proto::MAX_PORTABLE_DATAGRAM)),
        format!("{}–{} header bytes", 3, TickHeader::MAX_LEN),
    ];
    for phrase in expected {
        assert!(doc.contains(&phrase), "docs/protocol.md lacks `{phrase}`");
    }
}

#[test]
fn worked_examples_are_vectors() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/web/test/vectors.json");
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let vectors = json["vectors"].as_array().cloned().unwrap_or_default();
    let doc = protocol_md();
    let tables = tables(&doc);
    let examples = tables.iter().find(|t| t.heading == "Worked examples").map_or(&[][..], |t| &t.rows[..]);
    assert!(examples.len() >= 5, "docs/protocol.md: the worked examples table is missing or short");
    for (_, cells) in examples {
        let name = cells[0].trim_matches('`');
        let bytes: String = cells[1].chars().filter(char::is_ascii_hexdigit).collect();
        let vector = vectors.iter().find(|v| v["name"] == name);
        let hex = vector.and_then(|v| v["hex"].as_str()).unwrap_or_else(|| panic!("no vector named {name}"));
        assert_eq!(bytes, hex, "docs/protocol.md: the worked example `{name}` differs from vectors.json");
    }
}
