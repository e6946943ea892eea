//! Journal damage that fjall's replay would take for a crash's torn tail, found before fjall opens the store.
//!
//! fjall (3.1) replays each journal (`<store>/N.jnl`) batch by batch (a Start entry with the item count, the items,
//! an End entry with the xxh3 checksum of the items' bytes and a magic trailer) and, at the first entry it cannot
//! decode (an unknown tag, a length running past the end, a broken compressed value) or that is out of place (a
//! Start inside a batch, an item or End outside one), cuts the file at the end of the last complete batch and opens.
//! That is right for a torn tail, the batch a crash left half written at the end; but damage in a journal's middle
//! (bit rot, a bad copy) that breaks a tag or a length instead of an item's bytes is cut the same way, and every
//! batch after it is lost without a word: posts acknowledged and not yet flushed to tables, up to the journal bound.
//!
//! Here each journal is read the way fjall reads it, up to the end of its last complete batch; if bytes follow,
//! and a complete batch (its items' checksum matching) begins anywhere in them, the break is not a torn tail: the
//! store is refused as damaged, nothing changed, and the error says where to cut the journal to start anyway (what
//! fjall would have done) besides moving the store aside. A torn tail holds no complete batch after the break, so
//! a crash's restart is not refused. Only the newest journal can have one: fjall syncs a journal whole before it
//! begins the next, so a journal that a later one follows and that cannot be read to its end (a break, or a last
//! batch whose checksum fails) was damaged after it was written, and is refused too (fjall would cut it and replay
//! the later journals past the hole).
//!
//! A power cut can also leave a break with whole batches after it: batches written and not synced (a retention
//! deletion, written without a sync of its own, before a post whose sync did not finish; anything under `os`) may
//! come back with an earlier page lost and a later one kept. A lost page reads as it was before, so a break
//! followed by zeros to the end of its page, or by a whole page of zeros, is taken for that torn write, and fjall's
//! cut is right (nothing acknowledged under `fsync` is after it); but a batch at the break whose entries are whole and
//! only its checksum fails (a page lost inside a large value) fjall refuses rather than cuts, so that cut is named
//! (`After::ChecksumThenBatches`). Not told apart: damage that zeroes such a run (taken for
//! a torn write, as fjall takes every break), and a torn batch whose item bytes happen to hold a complete batch of
//! their own (a post's body made to look like one: refused as damage).

use std::path::{Path, PathBuf};

/// Entry tags.
const START: u8 = 1;
const ITEM: u8 = 2;
const END: u8 = 3;
const CLEAR: u8 = 4;
/// The trailer of an End entry.
const MAGIC: [u8; 4] = *b"FJL\x03";
/// An item's bytes before its key: tag, value type, compression, keyspace id (u64), key length (u16), value length
/// and stored value length (u32 each).
const ITEM_HEAD: usize = 21;

/// A journal damaged in its middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    /// The journal file.
    pub journal: PathBuf,
    /// The end of its last complete batch before the damage: where fjall would cut it.
    pub cut_at: u64,
    /// What shows that batches were written after the damage.
    pub after: After,
    /// The file's length.
    pub len: u64,
}

/// What follows a journal's damage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum After {
    /// A complete batch, beginning at this byte of the same journal.
    Batch(u64),
    /// The batch at the cut is whole but fails its checksum, and a complete batch begins at this byte after it:
    /// fjall refuses a checksum that fails wherever it is, with no word of where to cut. A power cut can leave that
    /// (a page inside the batch lost, a later page kept: no sync had finished since it was written, so under `fsync`
    /// neither it nor the batches after it were acknowledged); so can damage.
    ChecksumThenBatches(u64),
    /// A later journal: fjall syncs a journal whole before it begins the next, so a sealed journal that cannot be
    /// read to its end was damaged after it was written. Cut there, it would be replayed without its last batches
    /// and the later journals with theirs: a hole in the rooms' messages.
    Journal(PathBuf),
    /// No whole batch: the newest journal's batch at the cut is whole but fails its checksum (which fjall refuses
    /// rather than cuts), and zeros or a batch cut short follow. A power cut can leave that (the batch's end reached
    /// the disk, a page of its middle did not: its sync had not finished, so under `fsync` neither it nor what
    /// follows was acknowledged); so can damage.
    LastChecksum,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (journal, cut) = (self.journal.display(), self.cut_at);
        match &self.after {
            After::Batch(batch_after) => write!(
                f,
                "the journal {journal} cannot be read past byte {cut}, yet complete batches follow from byte \
                 {batch_after} (of {}): damage in its middle, not a crash's torn tail, where a replay stops. To start \
                 with what comes before the damage (the batches after it are lost), cut the journal there: \
                 `truncate -s {cut} {journal}`",
                self.len
            ),
            After::ChecksumThenBatches(batch_after) => write!(
                f,
                "the batch of the journal {journal} from byte {cut} fails its checksum, and complete batches follow it \
                 from byte {batch_after} (of {}): a write a power cut tore (no sync had finished since: under fsync \
                 neither it nor those after it were acknowledged), or damage. To start without it and the batches \
                 after it, cut the journal there: `truncate -s {cut} {journal}`",
                self.len
            ),
            After::LastChecksum => write!(
                f,
                "the last whole batch of the journal {journal} (from byte {cut}; the file is {}) fails its checksum: a \
                 write a power cut tore (its sync had not finished: under fsync it was not acknowledged, nor anything \
                 after it), or damage. To start without that batch, cut the journal there: \
                 `truncate -s {cut} {journal}`",
                self.len
            ),
            After::Journal(next) => write!(
                f,
                "the journal {journal} cannot be read past byte {cut} (of {}), yet it is not the newest: it was synced \
                 whole before {} was begun, so this is damage, not a crash's torn tail (a replay would go on with \
                 the later journals past a hole in the rooms' messages)",
                self.len,
                next.display()
            ),
        }
    }
}

/// The first journal in `store` damaged in its middle, if any (journals are read in full; they are bounded by the
/// store's journal size): a break with a complete batch after it in the same journal, or a break in a journal that
/// a later one follows (only the newest can have a crash's torn tail).
pub(super) fn damaged_journal(store: &Path) -> std::io::Result<Option<Damage>> {
    let mut journals = Vec::new();
    for entry in std::fs::read_dir(store)? {
        let path = entry?.path();
        let id = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("jnl"))
            .then(|| path.file_stem().and_then(|stem| stem.to_str()).and_then(|stem| stem.parse::<u64>().ok()))
            .flatten();
        if let Some(id) = id.filter(|_| path.is_file()) {
            journals.push((id, path));
        }
    }
    // In fjall's order (by number: 10.jnl comes after 9.jnl).
    journals.sort();
    for (i, (_, journal)) in journals.iter().enumerate() {
        // (Named in the error: "permission denied" alone does not say which file.)
        let named = |err: std::io::Error| std::io::Error::new(err.kind(), format!("{}: {err}", journal.display()));
        let bytes = read_written(journal).map_err(named)?;
        let len = bytes.len() as u64;
        let journal = journal.clone();
        // A sealed journal first: cut where it breaks (as the advice for the newest says), it would be replayed up
        // to the cut and the later journals after it, past the hole.
        if let (Some((_, next)), Some(cut_at)) = (journals.get(i + 1), unread_tail(&bytes)) {
            return Ok(Some(Damage { journal, cut_at: cut_at as u64, after: After::Journal(next.clone()), len }));
        }
        if let Some((cut_at, batch_after)) = break_with_batches_after(&bytes) {
            let after = match fails_its_checksum(&bytes, cut_at) {
                true => After::ChecksumThenBatches(batch_after as u64),
                false => After::Batch(batch_after as u64),
            };
            return Ok(Some(Damage { journal, cut_at: cut_at as u64, after, len }));
        }
        if let Some(cut_at) = unread_tail(&bytes).filter(|&cut| fails_its_checksum(&bytes, cut)) {
            return Ok(Some(Damage { journal, cut_at: cut_at as u64, after: After::LastChecksum, len }));
        }
    }
    Ok(None)
}

/// Whether the bytes from `cut` (where a replay stops) begin with a whole batch that fails its checksum, whatever
/// follows (zeros, or a batch cut short: until 2026-12-08 only zeros, and fjall's bare `ChecksumMismatch` was all a
/// start said of the other; the diff review's find).
fn fails_its_checksum(journal: &[u8], cut: usize) -> bool {
    matches!(batch_shape_at(journal, cut), Some((_, false)))
}

/// Where a replay stops reading `journal`, if bytes other than zeros follow (a torn tail in the newest journal,
/// damage in any other).
fn unread_tail(journal: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(end) = batch_at(journal, at) {
        at = end;
    }
    next_nonzero(journal, at).map(|_| at)
}

/// The journal's bytes up to the end of its last written region. fjall makes each journal 64 MiB at once
/// (`set_len`: a hole the file system reads as zeros), and reading that hole made every open read, and a debug build
/// scan, 64 MiB; where the file system tells its holes (`SEEK_DATA`/`SEEK_HOLE`), the hole at the end is not read
/// (nothing can be there). Elsewhere the whole file is read.
fn read_written(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let end = written_end(&file).unwrap_or(len).min(len);
    file.rewind()?; // (the holes were looked for by moving the file's offset)
    let mut bytes = Vec::with_capacity(usize::try_from(end).unwrap_or(0));
    file.take(end).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The end of the file's last region of data (the start of the hole after it), where the file system tells.
#[cfg(target_os = "linux")]
fn written_end(file: &std::fs::File) -> Option<u64> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let (mut from, mut end) = (0, 0);
    loop {
        let data = match lseek(fd, from, Whence::SeekData) {
            Ok(data) => data,
            Err(nix::errno::Errno::ENXIO) => break, // no data at or after `from`
            Err(_) => return None,                  // not told: read it all
        };
        let hole = lseek(fd, data, Whence::SeekHole).ok()?;
        if hole <= data {
            return None; // not what SEEK_HOLE promises: read it all
        }
        (from, end) = (hole, hole);
    }
    u64::try_from(end).ok()
}

#[cfg(not(target_os = "linux"))]
fn written_end(_file: &std::fs::File) -> Option<u64> {
    None
}

/// Where a replay stops reading `journal` (the end of its last complete batch) and where a complete batch begins
/// after that, if one does: not if what lies between looks like a torn write ([`looks_torn`]), whose cut fjall
/// makes itself, unless the batch at the cut is whole and only its checksum fails, which fjall refuses (until
/// 2026-12-08 that was let through, and the store refused to start with fjall's bare "ChecksumMismatch", no cut
/// named: a review's find).
fn break_with_batches_after(journal: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    while at < journal.len() {
        match batch_at(journal, at) {
            Some(end) => at = end,
            None => break,
        }
    }
    let cut = at;
    // fjall allocates its journal ahead (64 MiB here) and the rest is zeros: skipped a block at a time.
    let mut from = cut + 1;
    while let Some(start) = next_nonzero(journal, from) {
        if journal[start] == START && batch_at(journal, start).is_some() {
            let torn = looks_torn(&journal[cut..start], cut, parsed_to(journal, cut).saturating_sub(cut));
            return (!torn || fails_its_checksum(journal, cut)).then_some((cut, start));
            // (fjall refuses that)
        }
        from = start + 1;
    }
    None
}

/// Whether the bytes between a break (at `cut`) and the whole batch after it hold a page the disk never wrote, where
/// that page can be what broke the batch at `cut`: one that begins no later than `reach` bytes after `cut`, where
/// that batch stops making sense ([`parsed_to`]). Batches written but not synced when the power went (a retention
/// deletion, written without a sync of its own, before a post whose sync did not finish; or anything under `os`)
/// may come back with an earlier page lost and a later one kept: that is a torn write, nothing acknowledged after it
/// under `fsync`, and fjall's cut is right. A lost page reads as it was before: zeros after the last batch synced in
/// it (from `cut` to the page's end), or zeros all through (a page of the journal's preallocated hole). Bit rot or a
/// bad copy seldom leaves either (one that does is taken for a torn write too, as fjall alone takes every break).
/// A page of zeros past `reach` (a post's body of 8 KiB of zeros in a later batch, after a flipped Start tag) did
/// not break anything: it was taken for a torn write, and the damage before it went unreported (a review's find).
fn looks_torn(between: &[u8], cut: usize, reach: usize) -> bool {
    const PAGE: usize = 4096;
    let zeros = |bytes: &[u8]| !bytes.is_empty() && bytes.iter().all(|b| *b == 0);
    // Zeros from `from` (bytes after `cut`) to the end of that page: a page lost after what was synced in it.
    let zeros_to_page_end = |from: usize| {
        let end = ((cut + from) / PAGE + 1) * PAGE - cut;
        end <= between.len() && zeros(&between[from..end])
    };
    // From the cut, or from where the batch stops making sense (it read into the lost page).
    if zeros_to_page_end(0) || (reach < between.len() && zeros_to_page_end(reach)) {
        return true;
    }
    let first_page_end = (cut / PAGE + 1) * PAGE - cut;
    // Whole pages inside `between`, beginning within the broken batch's reach.
    (first_page_end..between.len())
        .step_by(PAGE)
        .take_while(|&start| start <= reach)
        .any(|start| between.get(start..start + PAGE).is_some_and(zeros))
}

/// How far the batch that begins at `at` makes sense: where its Start tag or an item does not parse; the end of
/// its End entry, if only that entry does not (a page lost from anywhere inside it zeroes its magic), or if it is
/// whole and only its checksum fails (a lost page anywhere in it explains that).
fn parsed_to(journal: &[u8], at: usize) -> usize {
    let Some(rest) = journal.get(at..) else { return at };
    if rest.first() != Some(&START) || rest.len() < 13 {
        return at;
    }
    let count = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]);
    let mut pos = at + 13; // tag, count (u32), seqno (u64)
    for _ in 0..count {
        match item_end(journal, pos) {
            Some(end) => pos = end,
            None => return pos,
        }
    }
    match batch_shape_at(journal, at) {
        Some((end, _)) => end,
        None => pos + 13, // its End entry: tag, checksum (u64), magic
    }
}

/// The first byte at or after `from` that is not zero.
fn next_nonzero(journal: &[u8], from: usize) -> Option<usize> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut at = from;
    while at < journal.len() {
        let block = &journal[at..journal.len().min(at + ZEROS.len())];
        if block != &ZEROS[..block.len()] {
            return block.iter().position(|b| *b != 0).map(|p| at + p);
        }
        at += block.len();
    }
    None
}

/// Whether `stored` decompresses (an lz4 block, as fjall writes a journal value of 4 KiB or more) to exactly `len`
/// bytes. fjall's reader decodes each item as it reads it and cuts the journal at one that does not decode (a lost
/// page inside a compressed value), as at any entry it cannot decode: its batch is no whole batch (until 2026-12-08
/// the scan read only its length, took such a batch for whole with a failing checksum, and refused a store fjall
/// would open as after any crash; the second diff review's find).
fn lz4_decodes(stored: &[u8], len: usize) -> bool {
    // (lz4 expands at most about 255 times: a longer length does not decode, and is not allocated.)
    if len > stored.len().saturating_mul(255).saturating_add(64) {
        return false;
    }
    let mut value = vec![0u8; len];
    matches!(lz4_flex::decompress_into(stored, &mut value), Ok(size) if size == len)
}

/// Tests: where each complete batch of `journal` begins, up to the first that is not one.
#[cfg(test)]
pub(super) fn batch_starts(journal: &[u8]) -> Vec<usize> {
    let (mut starts, mut at) = (Vec::new(), 0);
    while let Some(end) = batch_at(journal, at) {
        starts.push(at);
        at = end;
    }
    starts
}

/// The end of the complete batch that begins at `at`: a Start, exactly its count of items (or keyspace clears), and
/// an End whose checksum is the xxh3 of the items' bytes and whose trailer is whole. `None` if there is none.
fn batch_at(journal: &[u8], at: usize) -> Option<usize> {
    batch_shape_at(journal, at).and_then(|(end, sound)| sound.then_some(end))
}

/// The end of the batch that begins at `at` if its entries are whole (a Start, its count of items, an End with its
/// trailer), and whether its checksum matches.
fn batch_shape_at(journal: &[u8], at: usize) -> Option<(usize, bool)> {
    let rest = journal.get(at..)?;
    if *rest.first()? != START {
        return None;
    }
    let count = u32::from_le_bytes(rest.get(1..5)?.try_into().ok()?);
    let mut pos = at + 13; // tag, count (u32), seqno (u64)
    let items_from = pos;
    for _ in 0..count {
        pos = item_end(journal, pos)?;
    }
    let items = journal.get(items_from..pos)?;
    let end = journal.get(pos..pos + 13)?;
    let checksum = u64::from_le_bytes(end.get(1..9)?.try_into().ok()?);
    (end[0] == END && end[9..] == MAGIC).then_some((pos + 13, xxhash_rust::xxh3::xxh3_64(items) == checksum))
}

/// The end of the item (or keyspace clear) entry at `at`, if it is one whose lengths fit the file.
fn item_end(journal: &[u8], at: usize) -> Option<usize> {
    let head = journal.get(at..)?;
    match *head.first()? {
        CLEAR => (at + 9 <= journal.len()).then_some(at + 9), // tag, keyspace id (u64)
        ITEM => {
            let head = head.get(..ITEM_HEAD)?;
            // Value types: value, tombstone, weak tombstone, indirection; compression: none, lz4.
            if !matches!(head[1], 0 | 1 | 2 | 4) || head[2] > 1 {
                return None;
            }
            let key = usize::from(u16::from_le_bytes([head[11], head[12]]));
            let len = u32::from_le_bytes(head[13..17].try_into().ok()?) as usize;
            let stored = u32::from_le_bytes(head[17..21].try_into().ok()?) as usize;
            let end = at.checked_add(ITEM_HEAD)?.checked_add(key)?.checked_add(stored)?;
            let value = journal.get(end - stored..end)?;
            (head[2] == 0 || lz4_decodes(value, len)).then_some(end)
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "journal_scan_tests.rs"]
mod tests;
