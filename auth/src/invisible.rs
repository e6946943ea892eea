//! What makes a subject read as another: characters that show nothing where they stand.

/// Whether `sub` has a character that shows nothing where it stands: Unicode's format characters (category Cf),
/// the line and paragraph separators, the blanks that render as nothing (Hangul fillers, the Braille blank,
/// Khmer's inherent vowels) and the code points Unicode reserves to render as nothing (unassigned ones too: U+2065,
/// U+FFF0–FFF8, the tag block's and the variation selectors' unassigned rest); and the joiners and selectors (ZWJ,
/// ZWNJ, the combining grapheme joiner, variation selectors) anywhere but where they change a character's form:
/// a selector once after what it selects a form of ([`selects`]: an emoji, a CJK ideograph, ...), a joiner between
/// two letters of a script whose letters it joins or parts ([`joins`]) or in an emoji sequence (a ZWJ may also
/// follow an emoji's U+FE0F: 🏳️‍🌈); and tag characters anywhere but in the three flags drawn as such (England,
/// Scotland, Wales: U+1F3F4, their tags, the cancel tag). `alice` followed by any of them reads as
/// `alice`; 👩‍💻, ❤️, 🏴󠁧󠁢󠁳󠁣󠁴󠁿 and Persian names spelled with ZWNJ stay names, and so do two sequences whose
/// invisible part changes how the letters around it are drawn: a keycap (`1` U+FE0F U+20E3: 1️⃣; the same without
/// U+FE0F, drawn alike by emoji fonts, is refused) and the Mongolian vowel separator (U+180E) before the final a or
/// e (U+1820, U+1821) after a Mongolian letter. Malayalam's old-style chillu (one of its six consonants, the virama
/// U+0D4D, a ZWJ) is refused: it reads as the atomic chillu (U+0D7A–U+0D7F), the spelling to use.
pub(crate) fn has_invisible(sub: &str) -> bool {
    let (mut before, mut before2): (Option<char>, Option<char>) = (None, None);
    // Where the tags of a flag drawn as such end (a char index), once its U+1F3F4 has been seen.
    let mut in_flag: Option<usize> = None;
    let mut chars = sub.char_indices().peekable();
    let mut i = 0usize;
    while let Some((at, c)) = chars.next() {
        i += 1;
        let next = chars.peek().map(|&(_, n)| n);
        if c == '\u{1F3F4}' {
            in_flag = flag_tags(&sub[at + c.len_utf8()..]).map(|tags| i + tags);
        }
        let shown = match c {
            // A keycap: a digit, `#` or `*`, U+FE0F, then the enclosing keycap (without U+FE0F it reads the same).
            '\u{FE0F}' if before.is_some_and(is_keycap_base) && next == Some('\u{20E3}') => true,
            '\u{20E3}' if before.is_some_and(is_keycap_base) => false,
            // The vowel separator before a final a or e shapes it (a gap and the final form); elsewhere it only
            // breaks the join, as a ZWNJ would.
            '\u{180E}' if before.is_some_and(is_mongolian_letter) && matches!(next, Some('\u{1820}' | '\u{1821}')) => {
                true
            }
            // An old-style chillu: the atomic chillu reads the same.
            '\u{200D}' if before == Some('\u{0D4D}') && before2.is_some_and(has_atomic_chillu) => false,
            '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E001F}'
            | '\u{E0080}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}' => false,
            // Selectors: part of what comes before them, if that is a character they select a form of (an emoji,
            // a CJK ideograph, a Mongolian letter, ...; not another selector or a joiner: a run of them after one
            // letter reads as that letter). After a Latin letter (`Björn` FE0F) they draw nothing.
            c if is_selector(c) => before.is_some_and(|b| selects(c, b)),
            // Joiners: between two characters of a script whose letters they join or part (Arabic, the Indic
            // scripts, ...) or of an emoji sequence, not after another joiner, and after a selector only as in an
            // emoji sequence (🏳️‍🌈: ZWJ after U+FE0F after an emoji; `José` FE0F ZWJ x reads as `Joséx`). Between
            // Latin letters (`Bjö` ZWNJ `rn`) they draw nothing.
            // Only a ZWJ continues an emoji sequence (a ZWNJ between two emoji draws nothing), and neither joins a
            // digit or a script's punctuation (between two Persian digits a ZWNJ reads as nothing).
            c if is_joiner(c) => {
                let zwj = c == '\u{200D}';
                let emoji = |e: char| zwj && is_emoji(e);
                let selected_emoji = before == Some('\u{FE0F}') && zwj && before2.is_some_and(is_emoji);
                let after = before.is_some_and(|b| joins_letter(b) || emoji(b)) || selected_emoji;
                after && next.is_some_and(|n| joins_letter(n) || emoji(n))
            }
            // Tags: only as one of the three flags drawn as such (England, Scotland, Wales: U+1F3F4, the tags of
            // `gbeng`, `gbsct` or `gbwls`, the cancel tag). Any other tag sequence is drawn as a plain 🏴, so
            // `ann🏴` with tags of its own choosing would read as `ann🏴`.
            '\u{E0020}'..='\u{E007F}' => in_flag.is_some_and(|end| i <= end),
            _ => true,
        };
        if !shown {
            return true;
        }
        (before2, before) = (before, Some(c));
    }
    // A joiner or selector last joins nothing.
    before.is_some_and(|last| matches!(last, '\u{200C}'..='\u{200D}' | '\u{034F}'))
}

/// How many characters of tags follow a U+1F3F4 at the start of `rest` when they make one of the three flags drawn
/// as such (Unicode's recommended emoji tag sequences: England, Scotland, Wales), cancel tag included.
fn flag_tags(rest: &str) -> Option<usize> {
    const FLAGS: [&str; 3] = ["gbeng", "gbsct", "gbwls"];
    let tags: String = rest
        .chars()
        .take_while(|c| ('\u{E0020}'..='\u{E007E}').contains(c))
        .filter_map(|c| char::from_u32(u32::from(c) - 0xE0000))
        .collect();
    let cancelled = rest.chars().nth(tags.chars().count()) == Some('\u{E007F}');
    (cancelled && FLAGS.contains(&tags.as_str())).then(|| tags.chars().count() + 1)
}

/// The six Malayalam consonants with an atomic chillu (ക ണ ന ര ല ള).
fn has_atomic_chillu(c: char) -> bool {
    matches!(c, '\u{0D15}' | '\u{0D23}' | '\u{0D28}' | '\u{0D30}' | '\u{0D32}' | '\u{0D33}')
}

/// What a keycap encloses.
fn is_keycap_base(c: char) -> bool {
    c.is_ascii_digit() || c == '#' || c == '*'
}

/// A letter of the Mongolian script (its basic letters, U+1820–U+1878).
fn is_mongolian_letter(c: char) -> bool {
    ('\u{1820}'..='\u{1878}').contains(&c)
}

/// Whether `c` is an emoji that a ZWJ sequence may continue after its presentation selector (U+FE0F): Unicode's
/// Extended_Pictographic blocks, roughly (symbols and pictographs; no letter, mark or punctuation, after which the
/// selector and the joiner would show nothing).
fn is_emoji(c: char) -> bool {
    matches!(
        c,
        '\u{00A9}'
            | '\u{00AE}'
            | '\u{203C}'
            | '\u{2049}'
            | '\u{2122}'
            | '\u{2139}'
            | '\u{2194}'..='\u{21AA}'
            | '\u{231A}'..='\u{23FF}'
            | '\u{24C2}'
            | '\u{25AA}'..='\u{27BF}'
            | '\u{2934}'..='\u{2935}'
            | '\u{2B05}'..='\u{2B55}'
            | '\u{3030}'
            | '\u{303D}'
            | '\u{3297}'
            | '\u{3299}'
            | '\u{1F000}'..='\u{1FAFF}'
    )
}

/// Whether selector `c` selects a form of `b`: the emoji and text presentation selectors (U+FE0E, U+FE0F) after an
/// emoji with both forms ([`super::variation::has_variation`]); the standardized variation selectors
/// (U+FE00–U+FE0D) after a CJK ideograph, a mathematical operator or a letter of the scripts that define sequences
/// with them (Myanmar, Phags-pa, Manichaean, Egyptian hieroglyphs); ideographic variation selectors
/// (U+E0100–U+E01EF) after a CJK ideograph; Mongolian's free variation selectors after a Mongolian letter. The
/// combining grapheme joiner (U+034F) selects nothing visible.
fn selects(c: char, b: char) -> bool {
    let cjk = |b: char| {
        matches!(
            b,
            '\u{3400}'..='\u{4DBF}'
                | '\u{4E00}'..='\u{9FFF}'
                | '\u{F900}'..='\u{FAFF}'
                | '\u{20000}'..='\u{3FFFF}'
        )
    };
    match c {
        // (Only what has both forms: 😀 with U+FE0F reads as 😀.)
        '\u{FE0E}' | '\u{FE0F}' => super::variation::has_variation(b),
        '\u{FE00}'..='\u{FE0D}' => {
            cjk(b)
                || matches!(
                    b,
                    '\u{2200}'..='\u{22FF}'
                        | '\u{2A00}'..='\u{2AFF}'
                        | '\u{1000}'..='\u{109F}'
                        | '\u{A9E0}'..='\u{A9FF}'
                        | '\u{AA60}'..='\u{AA7F}'
                        | '\u{A840}'..='\u{A87F}'
                        | '\u{10AC0}'..='\u{10AFF}'
                        | '\u{13000}'..='\u{1342F}'
                )
        }
        '\u{E0100}'..='\u{E01EF}' => cjk(b),
        '\u{180B}'..='\u{180D}' | '\u{180F}' => ('\u{1820}'..='\u{18AA}').contains(&b),
        _ => false,
    }
}

/// Whether a ZWJ or ZWNJ next to `c` changes how it is drawn: a character (letter, mark, virama) of a script
/// whose letters join or form conjuncts: Arabic, Syriac, Thaana, N'Ko and the other scripts of U+0600–U+08FF, the
/// Indic scripts (U+0900–U+0DFF), Tibetan, Myanmar, Khmer, Mongolian, the Brahmic scripts of U+A800–U+ABFF and of
/// the supplementary plane (U+11000–U+11FFF), Kharoshthi and Manichaean, Adlam, and Arabic's presentation forms.
fn joins(c: char) -> bool {
    matches!(
        c,
        '\u{0600}'..='\u{08FF}'
            | '\u{0900}'..='\u{0DFF}'
            | '\u{0F00}'..='\u{0FFF}'
            | '\u{1000}'..='\u{109F}'
            | '\u{1780}'..='\u{18AF}'
            | '\u{A800}'..='\u{ABFF}'
            | '\u{FB50}'..='\u{FDFF}'
            | '\u{FE70}'..='\u{FEFE}'
            | '\u{10A00}'..='\u{10AFF}'
            | '\u{11000}'..='\u{11FFF}'
            | '\u{1E900}'..='\u{1E95F}'
    )
}

/// [`joins`], and not a digit or a punctuation mark of those scripts (Arabic's comma, semicolon, question mark,
/// full stop and percent sign, the Indic dandas, ...), which no joiner changes.
fn joins_letter(c: char) -> bool {
    joins(c)
        && !c.is_numeric()
        && !matches!(
            c,
            '\u{0609}'..='\u{060F}'
                | '\u{061B}'
                | '\u{061D}'..='\u{061F}'
                | '\u{066A}'..='\u{066D}'
                | '\u{06D4}'
                | '\u{06DE}'
                | '\u{06E9}'
                | '\u{06FD}'..='\u{06FE}'
                | '\u{0964}'..='\u{0965}'
                | '\u{0970}'
                | '\u{0DF4}'
                | '\u{0F04}'..='\u{0F14}'
                | '\u{104A}'..='\u{104F}'
                | '\u{17D4}'..='\u{17DA}'
                | '\u{1800}'..='\u{180A}'
                | '\u{FD3E}'..='\u{FD3F}'
        )
}

/// A variation selector or the combining grapheme joiner (shows nothing of its own).
fn is_selector(c: char) -> bool {
    matches!(c, '\u{034F}' | '\u{180B}'..='\u{180F}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

/// ZWNJ or ZWJ.
fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}'..='\u{200D}')
}
