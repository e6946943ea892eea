//! Build script of `quiver-server` and `quiver-cli`: sets `QUIVER_COMMIT` (what `--version` prints after the crate
//! version) to the `QUIVER_COMMIT` environment variable if set (container builds without `.git`), else the git
//! commit of the checkout (short hash), else `unknown commit`.

use std::{path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=QUIVER_COMMIT");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = root.join(".git");
    // A new commit moves the branch's ref (or HEAD itself when detached).
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git.join(reference).display());
        }
    }
    let commit = std::env::var("QUIVER_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(|| {
        let out = Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        let hash = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !hash.trim().is_empty()).then(|| format!("commit {}", hash.trim()))
    });
    println!("cargo:rustc-env=QUIVER_COMMIT={}", commit.unwrap_or_else(|| "unknown commit".into()));
}
