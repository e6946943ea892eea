//! qlog (opt-in): one file per connection, JSON-SEQ as quinn's `qlog` support writes it and qvis reads it.

use std::path::Path;

/// A qlog stream writing to `DIR/<µs since the epoch>-<id>.sqlog`; `None` (logged) when the file cannot be
/// created: the connection goes on without one.
pub fn stream(dir: &Path, id: &str, title: String) -> Option<quinn::QlogStream> {
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let path = dir.join(format!("{now_us}-{id}.sqlog"));
    let file = match std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(&path)) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot write a qlog file");
            return None;
        }
    };
    let mut config = quinn::QlogConfig::default();
    config.writer(Box::new(file)).title(Some(title));
    config.into_stream()
}

/// `transport` (a configuration just built, so not shared yet) writing its connection's qlog into `dir`.
pub fn attach(transport: &mut std::sync::Arc<quinn::TransportConfig>, dir: &Path, id: &str, title: String) {
    if let Some(transport) = std::sync::Arc::get_mut(transport) {
        transport.qlog_stream(stream(dir, id, title));
    }
}
