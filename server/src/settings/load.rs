//! Layering: the file, then `QUIVER_…` environment variables, then flags, each a value for one key; every error
//! names where the bad value came from (the file's line, the variable, the flag).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::{Invalid, Settings};

/// Environment variables for settings start with this: `QUIVER_LISTEN`, `QUIVER_LIMITS_POSTS_PER_S` (section,
/// underscore, key; upper case).
pub const ENV_PREFIX: &str = "QUIVER_";

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type (toml's message names the line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending text.
        message: String,
    },
    /// An override (variable or flag) names no setting or holds a value the setting cannot take.
    #[error("{origin}: {message}")]
    Override {
        /// `QUIVER_…` or `--flag`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value that parsed but cannot be used (out of range, contradicting another).
    #[error("{at}: {key}: {message}")]
    Invalid {
        /// Where it was set: `FILE line N`, a variable, a flag, or `default`.
        at: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// One value given outside the file: a variable or a flag (its `Debug` leaves the value out: it may be a secret).
#[derive(Clone, PartialEq)]
pub struct Override {
    /// Where it came from (`QUIVER_LISTEN`, `--listen`).
    pub origin: String,
    /// `section.key` or a top-level `key`.
    pub key: String,
    /// The values to try, in order: the first the setting accepts is taken (an environment variable's text is
    /// tried as a TOML value, then as a string, then as a comma-separated list).
    pub candidates: Vec<Value>,
}

impl std::fmt::Debug for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Override").field("origin", &self.origin).field("key", &self.key).finish_non_exhaustive()
    }
}

impl Override {
    /// A flag's value for `key`.
    pub fn flag(flag: &str, key: &str, value: impl Into<Value>) -> Override {
        Override { origin: flag.into(), key: key.into(), candidates: vec![value.into()] }
    }

    /// An environment variable's text for `key`.
    fn env(var: &str, key: String, text: &str) -> Override {
        let mut candidates = Vec::new();
        if let Ok(Value::Table(mut parsed)) = format!("v = {text}").parse::<Table>().map(Value::Table) {
            if let Some(value) = parsed.remove("v") {
                candidates.push(value);
            }
        }
        candidates.push(Value::String(text.into()));
        let list = text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into()));
        candidates.push(Value::Array(list.collect()));
        Override { origin: var.into(), key, candidates }
    }
}

/// Where each value came from, to name it in errors (its `Debug` leaves the file's text out).
#[derive(Clone, Default)]
pub struct Layers {
    file: Option<(PathBuf, String)>,
    overrides: Vec<(String, String)>,
}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.file.as_ref().map(|(path, _)| path);
        f.debug_struct("Layers").field("file", &file).field("overrides", &self.overrides).finish()
    }
}

/// toml's message for an error in `text`, with the value of any `hs256_secret` line and the credentials of any
/// `url` line (the broker's) replaced: toml quotes the offending line, and a secret written without quotes (or a
/// mistyped line around one) would be printed.
fn redacted(text: &str, message: String) -> String {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter_map(|(key, value)| {
            let value = value.trim();
            match key.trim().trim_matches('"') {
                "hs256_secret" => Some((value.to_string(), "<redacted>".to_string())),
                "url" => Some((value.to_string(), crate::cluster::BrokerSettings::redact(value))),
                _ => None,
            }
        })
        .filter(|(value, redacted)| value.len() > 4 && value != redacted)
        .fold(message, |message, (value, redacted)| message.replace(&value, &redacted))
        .lines()
        .map(|line| withheld(line).unwrap_or_else(|| line.to_string()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// toml's quote of a line of the file (`12 | text`) withheld when the line names a secret or a URL in any form
/// the value-by-value replacement above does not read (a dotted key, an inline table).
fn withheld(line: &str) -> Option<String> {
    let (gutter, quoted) = line.split_once('|')?;
    let number = gutter.trim();
    let sensitive = ["hs256_secret", "url", "pass"].iter().any(|word| quoted.contains(word));
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) && sensitive)
        .then(|| format!("{gutter}| <the line is not shown: it may hold a secret>"))
}

impl Layers {
    /// Where `key` got its value: the last override of it, else its line in the file, else `default`.
    pub fn locate(&self, key: &str) -> String {
        if let Some((origin, _)) = self.overrides.iter().rev().find(|(_, k)| k == key) {
            return origin.clone();
        }
        if let Some((path, text)) = &self.file {
            if let Some(line) = line_of(text, key) {
                return format!("{} line {line}", path.display());
            }
        }
        "default".into()
    }

    /// `invalid` as an error naming where its value came from.
    pub fn error(&self, invalid: Invalid) -> SettingsError {
        SettingsError::Invalid { at: self.locate(&invalid.key), key: invalid.key, message: invalid.message }
    }
}

/// The 1-based line of `section.key` (or a top-level `key`) in a TOML text: under a `[section]` header, as a
/// dotted key (`section.key = …`), or inside an inline table (`section = { key = … }`).
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().to_string();
            continue;
        }
        let Some((left, value)) = line.split_once('=') else { continue };
        let left: Vec<&str> = left.split('.').map(|part| part.trim().trim_matches('"')).collect();
        let full = match current.is_empty() {
            true => left.join("."),
            false => format!("{current}.{}", left.join(".")),
        };
        if full == key {
            return Some(n + 1);
        }
        // `section = { …, name = … }`
        let inline = value.trim_start().strip_prefix('{').is_some_and(|table| {
            table.split(',').any(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim().trim_matches('"') == name))
        });
        if full == section && inline {
            return Some(n + 1);
        }
    }
    None
}

/// Every key of the settings, as `section.key` or `key`, from the defaults' shape.
pub fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    if let Ok(Value::Table(table)) = Value::try_from(Settings::default()) {
        for (name, value) in table {
            match value {
                Value::Table(section) => keys.extend(section.keys().map(|key| format!("{name}.{key}"))),
                _ => keys.push(name),
            }
        }
    }
    keys
}

/// Whether environment variable `var` is read as a setting (or refused as naming a section's missing key), as
/// [`load`] reads the environment: other programs' `QUIVER_…` variables (and `QUIVER_CONFIG`) are not.
pub fn names_a_setting(var: &str) -> bool {
    env_key(var, &keys()).is_some()
}

/// The setting an environment variable names: `None` when it names no section or top-level key (other programs'
/// `QUIVER_…` variables), an error when it names a section but no key of it, a section alone (`QUIVER_STORE`, after
/// the flag `--store`), or a key but for its underscores or its end (`QUIVER_DATADIR`, `QUIVER_DRAIN_TIMEOUT`):
/// such a typo, silently passed over, started the server on its defaults (a data directory of `.quiver`).
fn env_key(var: &str, keys: &[String]) -> Option<Result<String, SettingsError>> {
    let rest = var.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    if keys.iter().any(|k| *k == rest && !k.contains('.')) {
        return Some(Ok(rest));
    }
    let mut sections: Vec<&str> = keys.iter().filter_map(|k| k.split_once('.').map(|(s, _)| s)).collect();
    sections.dedup();
    let refused = |message: String| Some(Err(SettingsError::Override { origin: var.into(), message }));
    if sections.contains(&rest.as_str()) {
        let in_it: Vec<String> =
            keys.iter().filter(|k| k.starts_with(&format!("{rest}."))).map(|k| env_name(k)).collect();
        return refused(format!("names the section [{rest}], not a setting: its settings are {}", in_it.join(", ")));
    }
    let Some(section) = sections.into_iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
        let meant = suggestion(&rest, keys)?;
        return refused(format!("there is no such setting; did you mean {}?", env_name(&meant)));
    };
    let key = format!("{section}.{}", &rest[section.len() + 1..]);
    match keys.contains(&key) {
        true => Some(Ok(key)),
        false => {
            let hint = suggestion(&rest, keys).map(|k| format!("; did you mean {}?", env_name(&k))).unwrap_or_default();
            refused(format!("there is no setting {key} (quiver-server config init lists them all){hint}"))
        }
    }
}

/// The environment variable of setting `key`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The setting `rest` (a variable's name past `QUIVER_`, in lower case) most likely meant: one that reads the same
/// without its underscores and dots, or that begins so (a unit left off: `drain_timeout` for `drain_timeout_ms`).
fn suggestion(rest: &str, keys: &[String]) -> Option<String> {
    let squash = |s: &str| s.chars().filter(|c| *c != '_' && *c != '.').collect::<String>();
    let given = squash(rest);
    let same = keys.iter().find(|k| squash(k) == given);
    let longer = || keys.iter().find(|k| k.replace('.', "_").starts_with(&format!("{rest}_")));
    same.or_else(longer).cloned()
}

/// Sets `key` in `table` (creating its section).
fn set(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        Some((section, name)) => {
            let entry = table.entry(section).or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(section) = entry {
                section.insert(name.into(), value);
            }
        }
        None => {
            table.insert(key.into(), value);
        }
    }
}

/// Reads the settings: defaults, then `file` (if any), then the `QUIVER_…` variables of `env`, then `flags`; and
/// checks the result. Unknown keys and wrong types are errors, as are values out of range.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: Vec<Override>,
) -> Result<(Settings, Layers), SettingsError> {
    let mut layers = Layers::default();
    let mut table = Table::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.into(), source })?;
        // Typed first: toml's errors for unknown keys and wrong types carry the line.
        let parse_error =
            |message: String| SettingsError::Parse { path: path.into(), message: redacted(&text, message) };
        toml::from_str::<Settings>(&text).map_err(|err| parse_error(err.to_string()))?;
        table = text.parse::<Table>().map_err(|err| parse_error(err.to_string()))?;
        layers.file = Some((path.into(), text));
    }
    let keys = keys();
    let mut overrides = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (var, text) in env {
        match env_key(&var, &keys) {
            Some(Ok(key)) => overrides.push(Override::env(&var, key, &text)),
            Some(Err(err)) => return Err(err),
            None => {}
        }
    }
    overrides.extend(flags);
    for over in overrides {
        if !keys.contains(&over.key) {
            return Err(SettingsError::Override { origin: over.origin, message: format!("no setting {}", over.key) });
        }
        // Each value alone on the defaults, so that an error is this value's; the first reading's error is the
        // one reported (the text read as what it looks like).
        let mut first = None;
        let accepted = over.candidates.iter().find(|value| {
            let mut alone = Table::new();
            set(&mut alone, &over.key, (*value).clone());
            match Settings::deserialize(Value::Table(alone)) {
                Ok(_) => true,
                Err(err) => {
                    first.get_or_insert_with(|| err.to_string());
                    false
                }
            }
        });
        let Some(value) = accepted else {
            let message = format!("{}: {}", over.key, first.unwrap_or_default());
            return Err(SettingsError::Override { origin: over.origin, message });
        };
        set(&mut table, &over.key, value.clone());
        layers.overrides.push((over.origin, over.key));
    }
    let settings = Settings::deserialize(Value::Table(table))
        .map_err(|err| SettingsError::Override { origin: "settings".into(), message: err.to_string() })?;
    settings.check().map_err(|invalid| layers.error(invalid))?;
    Ok((settings, layers))
}
