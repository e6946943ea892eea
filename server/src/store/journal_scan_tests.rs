use super::*;

/// A batch as fjall writes it: Start, the items, End.
fn batch(seqno: u64, items: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in items {
        body.extend([ITEM, 0, 0]);
        body.extend(3u64.to_le_bytes());
        body.extend((key.len() as u16).to_le_bytes());
        body.extend((value.len() as u32).to_le_bytes());
        body.extend((value.len() as u32).to_le_bytes());
        body.extend(*key);
        body.extend(*value);
    }
    let mut out = vec![START];
    out.extend((items.len() as u32).to_le_bytes());
    out.extend(seqno.to_le_bytes());
    out.extend(&body);
    out.push(END);
    out.extend(xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    out.extend(MAGIC);
    out
}

fn journal(batches: usize) -> (Vec<u8>, Vec<usize>) {
    let (mut bytes, mut starts) = (Vec::new(), Vec::new());
    for i in 0..batches {
        starts.push(bytes.len());
        bytes.extend(batch(i as u64, &[(b"key", &[i as u8; 20]), (b"other", b"value")]));
    }
    (bytes, starts)
}

#[test]
fn a_whole_journal_or_a_torn_tail_is_not_damage() {
    let (whole, starts) = journal(10);
    assert_eq!(break_with_batches_after(&whole), None);
    assert_eq!(break_with_batches_after(&[]), None);
    // Cut anywhere inside its last batch (a crash while writing it), or zeros after it (blocks never written).
    for cut in starts[9] + 1..whole.len() {
        assert_eq!(break_with_batches_after(&whole[..cut]), None, "cut at {cut}");
    }
    let mut zeros = whole.clone();
    zeros.extend(vec![0; 10_000]);
    assert_eq!(break_with_batches_after(&zeros), None);
    // A page the disk never wrote (zeros up to a page boundary), then a whole batch: a torn write after a power
    // cut (a batch written and not synced before one whose sync did not finish), not damage.
    let mut torn_page = whole[..starts[9] + 7].to_vec();
    torn_page.resize(torn_page.len().next_multiple_of(4096) + 4096, 0);
    torn_page.extend(&whole[starts[8]..starts[9]]);
    assert_eq!(break_with_batches_after(&torn_page), None);
    // Zeros not up to a page boundary, or fewer than a sector up to one: damage, found past them.
    let mut short = whole[..starts[9] + 7].to_vec();
    short.resize(short.len() + 1000, 0);
    let after = short.len();
    short.extend(&whole[starts[8]..starts[9]]);
    assert!(after < 4096);
    assert_eq!(break_with_batches_after(&short), Some((starts[9], after)));
    let mut sector = whole[..starts[9] + 7].to_vec();
    sector.resize(4096 - 300, 0xff);
    sector.resize(4096, 0);
    sector.extend(&whole[starts[8]..starts[9]]);
    assert_eq!(break_with_batches_after(&sector), Some((starts[9], 4096)));
    // The page holding the cut lost (zeros from the cut to its end, however few), a later page kept with the
    // end of a batch and a whole batch: torn.
    let mut lost_first = whole[..starts[9]].to_vec();
    lost_first.resize(lost_first.len().next_multiple_of(4096), 0);
    lost_first.extend(&whole[starts[9] + 3..starts[9] + 40]);
    lost_first.extend(&whole[starts[8]..starts[9]]);
    assert_eq!(break_with_batches_after(&lost_first), None);
    // The page lost begins inside the broken batch's End entry (its items whole, its magic zeros), a later
    // page kept with a whole batch: torn, not damage (the scan stopped looking at the End entry's start).
    for into_end in 1..13 {
        let end_entry = starts[9] - 13;
        let mut lost_in_end = whole[..end_entry + into_end].to_vec();
        lost_in_end.resize(lost_in_end.len().next_multiple_of(4096) + 4096, 0);
        lost_in_end.extend(&whole[starts[8]..starts[9]]);
        // (The break is at batch 8, whose End entry the lost page cut; batch 9 went with the lost pages.)
        assert_eq!(break_with_batches_after(&lost_in_end), None, "lost from {into_end} bytes into the End entry");
    }
    // The last batch with a byte of an item wrong (a torn write of its middle): fjall's checksum, not a break
    // with batches after it.
    let mut torn = whole.clone();
    torn[starts[9] + 30] ^= 0xff;
    assert_eq!(break_with_batches_after(&torn), None);
}

#[test]
fn a_broken_tag_or_length_with_batches_after_it_is_damage() {
    let (whole, starts) = journal(10);
    let damages: [(&str, usize, u8); 5] = [
        ("the Start tag", starts[4], 9),
        ("the item count", starts[4] + 1, 7),
        ("an item's tag", starts[4] + 13, 0x5a),
        ("an item's key length", starts[4] + 13 + 11, 0xff),
        ("the End tag", starts[5] - 13, 0),
    ];
    for (what, at, byte) in damages {
        let mut damaged = whole.clone();
        damaged[at] = byte;
        assert_eq!(break_with_batches_after(&damaged), Some((starts[4], starts[5])), "{what}");
    }
    // A Start tag broken in front of a post whose body holds a page of zeros (9,000 zero bytes): damage, not a
    // torn write (the zeros are the post's, past where the broken batch stopped making sense). It was taken for
    // a torn write, and the batches after it were dropped without a word.
    let (mut zero_body, mut at) = (Vec::new(), Vec::new());
    for i in 0..10u8 {
        at.push(zero_body.len());
        let value = if i == 4 { vec![0; 9000] } else { vec![i; 20] };
        zero_body.extend(batch(u64::from(i), &[(b"key", &value)]));
    }
    zero_body[at[4]] = 9;
    assert_eq!(break_with_batches_after(&zero_body), Some((at[4], at[5])), "a Start tag before zeros");
    // Sixteen bytes overwritten across two batches: the cut is before the first, the batch after the second.
    let mut damaged = whole.clone();
    damaged[starts[2] - 8..starts[2] + 8].fill(0x5a);
    assert_eq!(break_with_batches_after(&damaged), Some((starts[1], starts[3])));
}

#[test]
fn a_sealed_journal_that_cannot_be_read_to_its_end_is_damage_and_only_the_newest_may_be_torn() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, starts) = journal(10);
    let torn = &whole[..starts[9] + 20];
    // 9.jnl, torn, then 10.jnl (after it in fjall's order, before it in a name's).
    std::fs::write(dir.path().join("9.jnl"), torn).unwrap();
    assert_eq!(damaged_journal(dir.path()).unwrap(), None, "the newest journal's torn tail");
    std::fs::write(dir.path().join("10.jnl"), &whole).unwrap();
    let damage = damaged_journal(dir.path()).unwrap().expect("a sealed journal's broken tail is damage");
    let expected = Damage {
        journal: dir.path().join("9.jnl"),
        cut_at: starts[9] as u64,
        after: After::Journal(dir.path().join("10.jnl")),
        len: torn.len() as u64,
    };
    assert_eq!(damage, expected);
    assert!(damage.to_string().contains("not the newest"), "{damage}");
    // Its last batch whole and zeros after it (the journal's preallocated space): sound.
    let mut zeros = whole.clone();
    zeros.resize(whole.len() + 8192, 0);
    std::fs::write(dir.path().join("9.jnl"), &zeros).unwrap();
    assert_eq!(damaged_journal(dir.path()).unwrap(), None);
    // A byte of its last batch's value changed (its entries whole, the checksum fails), or a tag broken in its
    // middle with whole batches after it: damage of a sealed journal, with no cut to offer (the later journal
    // would be replayed past the hole).
    let sealed = Some(After::Journal(dir.path().join("10.jnl")));
    let mut changed = whole.clone();
    changed[starts[9] + 40] ^= 0xff;
    std::fs::write(dir.path().join("9.jnl"), &changed).unwrap();
    assert_eq!(damaged_journal(dir.path()).unwrap().map(|d| d.after), sealed);
    let mut middle = whole.clone();
    middle[starts[4]] = 9;
    std::fs::write(dir.path().join("9.jnl"), &middle).unwrap();
    let damage = damaged_journal(dir.path()).unwrap().expect("damage");
    assert_eq!((Some(damage.after.clone()), damage.cut_at), (sealed, starts[4] as u64));
    assert!(!damage.to_string().contains("truncate"), "no cut that would leave a hole: {damage}");
    // In the newest, a byte of its last batch's value changed (its entries whole): the cut that drops that batch
    // alone is named (fjall refuses it rather than cuts it).
    std::fs::remove_file(dir.path().join("10.jnl")).unwrap();
    let mut changed = whole.clone();
    changed[starts[9] + 40] ^= 0xff;
    std::fs::write(dir.path().join("9.jnl"), &changed).unwrap();
    let damage = damaged_journal(dir.path()).unwrap().expect("named");
    assert_eq!((damage.after.clone(), damage.cut_at), (After::LastChecksum, starts[9] as u64));
    assert!(damage.to_string().contains(&format!("truncate -s {}", starts[9])), "{damage}");
}

#[test]
fn hostile_lengths_end_the_batch_and_never_panic() {
    let (mut bytes, starts) = journal(3);
    // A key length and stored length at their largest, and an item count far past the file.
    bytes[starts[1] + 13 + 11..starts[1] + 13 + 13].fill(0xff);
    bytes[starts[1] + 13 + 17..starts[1] + 13 + 21].fill(0xff);
    bytes[starts[2] + 1..starts[2] + 5].fill(0xff);
    assert_eq!(break_with_batches_after(&bytes), None, "no complete batch after the first");
    for len in 0..bytes.len() {
        let _ = break_with_batches_after(&bytes[..len]);
    }
}

/// A power cut's torn write inside a batch with a large value: a whole page of the value lost (zeros), a later
/// batch kept. The batch's entries are whole and only its checksum fails, which fjall refuses wherever it is (it
/// cuts only at what it cannot decode): the cut is named. Before, the zero page was taken for a torn write whose cut
/// fjall makes itself, and the store refused to start with fjall's bare "ChecksumMismatch" (a review's find).
#[test]
fn a_torn_page_inside_a_whole_batch_with_batches_after_names_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, _) = journal(4);
    let big = bytes.len();
    bytes.extend(batch(4, &[(b"key", &[7; 12 * 1024])]));
    let after = bytes.len();
    bytes.extend(batch(5, &[(b"key", b"after")]));
    bytes.extend(batch(6, &[(b"key", b"after that")]));
    // A 4096-aligned page wholly inside the big value, zeroed.
    let page = (big + 13 + ITEM_HEAD + 3).next_multiple_of(4096);
    assert!(page + 4096 <= after - 13, "inside the value");
    bytes[page..page + 4096].fill(0);
    std::fs::write(dir.path().join("0.jnl"), &bytes).unwrap();
    let damage = damaged_journal(dir.path()).unwrap().expect("named");
    assert_eq!((damage.after.clone(), damage.cut_at), (After::ChecksumThenBatches(after as u64), big as u64));
    let said = damage.to_string();
    assert!(said.contains("fails its checksum") && said.contains(&format!("truncate -s {big}")), "{said}");
    // The batches after it cut short (no whole one): the same cut named.
    let cut_short = &bytes[..bytes.len() - 5 - batch(6, &[(b"key", b"after that")]).len()];
    std::fs::write(dir.path().join("0.jnl"), cut_short).unwrap();
    let damage = damaged_journal(dir.path()).unwrap().expect("named");
    assert_eq!((damage.after.clone(), damage.cut_at), (After::LastChecksum, big as u64));
    assert!(damage.to_string().contains(&format!("truncate -s {big}")), "{damage}");
}
