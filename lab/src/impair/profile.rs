//! [`ImpairmentProfile`]: what a link emulator does to packets, per direction, with a seed. One type for every
//! emulator backend. Named presets, TOML files, and command-line flags all produce it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why an [`ImpairmentProfile`] could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// No preset has this name (and no file does either).
    #[error("unknown preset {name:?}; presets: {}", preset_names())]
    UnknownPreset {
        /// What was asked for.
        name: String,
    },
    /// The text is not TOML, or not a profile (an unknown field, a value of the wrong type).
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// A value is out of its range.
    #[error("{direction}: {source}")]
    Invalid {
        /// `up` or `down`.
        direction: &'static str,
        /// Which value, and what is wrong with it.
        source: FieldError,
    },
    /// A profile file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A profile file was read but its profile is not valid.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content ([`ProfileError::Toml`] or [`ProfileError::Invalid`]).
        source: Box<ProfileError>,
    },
}

/// A [`DirectionProfile`] value out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A field outside the values it may take.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange {
        /// The field's name, as in TOML.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What it may be: `within 0..=100` or `a finite number >= 0`.
        expected: &'static str,
    },
    /// Loss bursts this short cannot make this much loss: the Gilbert model's good state lasts at least one packet,
    /// so the long-run loss is at most `burst_len / (burst_len + 1)` (with every packet lost, the bad state would
    /// never be left).
    #[error(
        "burst_len {burst_len} allows at most {:.1} % loss (burst_len / (burst_len + 1)), not loss_pct {loss_pct}",
        100.0 * burst_len / (burst_len + 1.0)
    )]
    BurstWithoutDelivery {
        /// The mean burst length asked for.
        burst_len: f64,
        /// The loss asked for.
        loss_pct: f64,
    },
}

fn preset_names() -> String {
    PRESETS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// What happens to packets going one way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectionProfile {
    /// Long-run share of packets lost, in percent.
    pub loss_pct: f64,
    /// Mean length of a loss burst, in packets. 1 (or less) means independent (Bernoulli) losses; above 1, losses
    /// follow a two-state Gilbert model whose bad state loses every packet, with the same long-run `loss_pct`.
    pub burst_len: f64,
    /// Fixed one-way delay, in ms.
    pub delay_ms: f64,
    /// Each packet's delay varies uniformly within ± this many ms (never below 0).
    pub jitter_ms: f64,
    /// Let jitter reorder packets. When false (the default), a packet never overtakes an earlier one: jitter then
    /// only stretches the gaps, as on a single-path link.
    pub jitter_reorders: bool,
    /// Share of packets, in percent, sent without the fixed delay, so they overtake packets in flight.
    pub reorder_pct: f64,
    /// Share of packets, in percent, delivered twice.
    pub duplicate_pct: f64,
    /// Bottleneck rate in kbit/s; 0 means unlimited.
    pub rate_kbps: f64,
    /// Bytes the bottleneck queue holds before it drops (tail drop). Only with a rate.
    pub queue_bytes: u64,
}

impl Default for DirectionProfile {
    fn default() -> Self {
        DirectionProfile {
            loss_pct: 0.0,
            burst_len: 1.0,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            jitter_reorders: false,
            reorder_pct: 0.0,
            duplicate_pct: 0.0,
            rate_kbps: 0.0,
            queue_bytes: 64 * 1024,
        }
    }
}

/// The longest delay or jitter a direction may add (ms).
const MAX_DELAY_MS: f64 = 60_000.0;

impl DirectionProfile {
    /// Checks that every value is in range.
    pub fn check(&self) -> Result<(), FieldError> {
        let pct = |field: &'static str, value: f64| {
            if (0.0..=100.0).contains(&value) {
                Ok(())
            } else {
                Err(FieldError::OutOfRange { field, value, expected: "within 0..=100" })
            }
        };
        pct("loss_pct", self.loss_pct)?;
        pct("reorder_pct", self.reorder_pct)?;
        pct("duplicate_pct", self.duplicate_pct)?;
        for (field, value) in [
            ("burst_len", self.burst_len),
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("rate_kbps", self.rate_kbps),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(FieldError::OutOfRange { field, value, expected: "a finite number >= 0" });
            }
        }
        // A minute of delay is already no path anyone runs on; beyond it the emulators' clocks would overflow.
        for (field, value) in [("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)] {
            if value > MAX_DELAY_MS {
                return Err(FieldError::OutOfRange { field, value, expected: "at most 60000 (a minute)" });
            }
        }
        // A rate under 1 kbit/s (0: none) puts a packet's departure past what the link's clock holds: below it,
        // a 1,200-byte packet waits almost three hours.
        if self.rate_kbps > 0.0 && self.rate_kbps < 1.0 {
            let value = self.rate_kbps;
            return Err(FieldError::OutOfRange { field: "rate_kbps", value, expected: "0 (no limit) or at least 1" });
        }
        if self.burst_len > 1.0 && self.loss_pct / 100.0 > self.burst_len / (self.burst_len + 1.0) {
            return Err(FieldError::BurstWithoutDelivery { burst_len: self.burst_len, loss_pct: self.loss_pct });
        }
        Ok(())
    }

    /// True when this direction changes nothing.
    pub fn is_clean(&self) -> bool {
        *self == DirectionProfile { queue_bytes: self.queue_bytes, ..DirectionProfile::default() }
    }
}

/// A link's impairment: client → server (`up`) and server → client (`down`), and the seed of every random choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ImpairmentProfile {
    /// Seed of the random choices (each direction and each client address derive their own stream from it).
    pub seed: u64,
    /// Client → server.
    pub up: DirectionProfile,
    /// Server → client.
    pub down: DirectionProfile,
}

/// The named presets, with a one-line description each.
pub const PRESETS: &[(&str, &str)] = &[
    ("clean", "no impairment"),
    ("lan", "0.25 ms ± 0.05 ms each way"),
    ("wifi", "3 ms ± 2 ms, 0.5 % loss in bursts of 2, each way"),
    ("lte", "25 ms ± 8 ms, 1 % loss in bursts of 3; 5 Mbit/s up, 20 Mbit/s down, 128 KiB queues"),
    ("lossy-1", "1 % random loss each way"),
    ("lossy-5", "5 % random loss each way"),
    ("delay-20", "20 ms ± 5 ms each way (no reordering)"),
    ("lossy-1-20", "1 % random loss and 20 ms each way"),
    ("lossy-5-20", "5 % random loss and 20 ms each way"),
    ("burst-20", "2 % loss in bursts of 4 packets and 20 ms each way"),
    ("satellite", "290 ms ± 10 ms, 0.5 % loss; 2 Mbit/s up, 10 Mbit/s down, 512 KiB queues"),
];

impl ImpairmentProfile {
    /// The same impairment both ways.
    pub fn symmetric(direction: DirectionProfile) -> Self {
        ImpairmentProfile { seed: 0, up: direction.clone(), down: direction }
    }

    /// A named preset (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, ProfileError> {
        let both = ImpairmentProfile::symmetric;
        let d = DirectionProfile::default;
        Ok(match name {
            "clean" => ImpairmentProfile::default(),
            "lan" => both(DirectionProfile { delay_ms: 0.25, jitter_ms: 0.05, ..d() }),
            "wifi" => both(DirectionProfile { delay_ms: 3.0, jitter_ms: 2.0, loss_pct: 0.5, burst_len: 2.0, ..d() }),
            "lte" => {
                let base = DirectionProfile {
                    delay_ms: 25.0,
                    jitter_ms: 8.0,
                    loss_pct: 1.0,
                    burst_len: 3.0,
                    queue_bytes: 128 * 1024,
                    ..d()
                };
                ImpairmentProfile {
                    seed: 0,
                    up: DirectionProfile { rate_kbps: 5_000.0, ..base.clone() },
                    down: DirectionProfile { rate_kbps: 20_000.0, ..base },
                }
            }
            "lossy-1" => both(DirectionProfile { loss_pct: 1.0, ..d() }),
            "lossy-5" => both(DirectionProfile { loss_pct: 5.0, ..d() }),
            "delay-20" => both(DirectionProfile { delay_ms: 20.0, jitter_ms: 5.0, ..d() }),
            "lossy-1-20" => both(DirectionProfile { loss_pct: 1.0, delay_ms: 20.0, ..d() }),
            "lossy-5-20" => both(DirectionProfile { loss_pct: 5.0, delay_ms: 20.0, ..d() }),
            "burst-20" => both(DirectionProfile { loss_pct: 2.0, burst_len: 4.0, delay_ms: 20.0, ..d() }),
            "satellite" => {
                let base = DirectionProfile {
                    delay_ms: 290.0,
                    jitter_ms: 10.0,
                    loss_pct: 0.5,
                    queue_bytes: 512 * 1024,
                    ..d()
                };
                ImpairmentProfile {
                    seed: 0,
                    up: DirectionProfile { rate_kbps: 2_000.0, ..base.clone() },
                    down: DirectionProfile { rate_kbps: 10_000.0, ..base },
                }
            }
            other => return Err(ProfileError::UnknownPreset { name: other.to_string() }),
        })
    }

    /// A profile from TOML text: `seed = 7`, then `[up]` and `[down]` tables with [`DirectionProfile`]'s fields.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let profile: ImpairmentProfile = toml::from_str(text)?;
        profile.check()?;
        Ok(profile)
    }

    /// A profile from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ProfileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ProfileError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| ProfileError::File { path: path.to_owned(), source: Box::new(e) })
    }

    /// A preset name or, if it names an existing file, a TOML file.
    pub fn named_or_file(spec: &str) -> Result<Self, ProfileError> {
        let path = Path::new(spec);
        if path.is_file() {
            Self::from_file(path)
        } else {
            Self::preset(spec)
        }
    }

    /// Checks both directions.
    pub fn check(&self) -> Result<(), ProfileError> {
        self.up.check().map_err(|source| ProfileError::Invalid { direction: "up", source })?;
        self.down.check().map_err(|source| ProfileError::Invalid { direction: "down", source })
    }

    /// True when neither direction changes anything.
    pub fn is_clean(&self) -> bool {
        self.up.is_clean() && self.down.is_clean()
    }
}

impl std::fmt::Display for DirectionProfile {
    /// What the direction does, in words: `loss 5 % (bursts of 2), delay 20 ms ± 5 ms (reordering), rate 1000
    /// kbit/s`, or `clean`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.loss_pct > 0.0 {
            let bursts = if self.burst_len > 1.0 { format!(" (bursts of {})", self.burst_len) } else { String::new() };
            parts.push(format!("loss {} %{bursts}", self.loss_pct));
        }
        if self.delay_ms > 0.0 || self.jitter_ms > 0.0 {
            let jitter = match (self.jitter_ms > 0.0, self.jitter_reorders) {
                (true, true) => format!(" ± {} ms (reordering)", self.jitter_ms),
                (true, false) => format!(" ± {} ms", self.jitter_ms),
                _ => String::new(),
            };
            parts.push(format!("delay {} ms{jitter}", self.delay_ms));
        }
        if self.reorder_pct > 0.0 {
            parts.push(format!("reorder {} %", self.reorder_pct));
        }
        if self.duplicate_pct > 0.0 {
            parts.push(format!("duplicate {} %", self.duplicate_pct));
        }
        if self.rate_kbps > 0.0 {
            parts.push(format!("rate {} kbit/s (queue {} B)", self.rate_kbps, self.queue_bytes));
        }
        match parts.is_empty() {
            true => f.write_str("clean"),
            false => f.write_str(&parts.join(", ")),
        }
    }
}

impl std::fmt::Display for ImpairmentProfile {
    /// Both directions, `up: …; down: …` (one line when they are the same), and the seed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.up == self.down {
            true => write!(f, "each way: {} (seed {})", self.up, self.seed),
            false => write!(f, "up: {}; down: {} (seed {})", self.up, self.down, self.seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_exists_and_is_valid() {
        for (name, _) in PRESETS {
            ImpairmentProfile::preset(name).unwrap().check().unwrap();
        }
        assert!(ImpairmentProfile::preset("clean").unwrap().is_clean());
        assert!(!ImpairmentProfile::preset("lossy-5").unwrap().is_clean());
        let unknown = ImpairmentProfile::preset("nope").unwrap_err();
        assert!(matches!(&unknown, ProfileError::UnknownPreset { name } if name == "nope"), "{unknown:?}");
        assert!(unknown.to_string().contains("lossy-5"), "{unknown}");
    }

    #[test]
    fn toml_round_trip_and_errors() {
        let profile = ImpairmentProfile::from_toml(
            "seed = 9\n[up]\nloss_pct = 2.5\nburst_len = 4\n[down]\ndelay_ms = 20\njitter_ms = 5\n",
        )
        .unwrap();
        assert_eq!(profile.seed, 9);
        assert_eq!(profile.up.loss_pct, 2.5);
        assert_eq!(profile.down.delay_ms, 20.0);
        assert_eq!(profile.down.queue_bytes, 64 * 1024, "defaults fill what the file leaves out");
        let text = toml::to_string(&profile).unwrap();
        assert_eq!(ImpairmentProfile::from_toml(&text).unwrap(), profile);
        let typo = ImpairmentProfile::from_toml("[up]\nlos_pct = 1\n").unwrap_err();
        assert!(matches!(typo, ProfileError::Toml(_)) && typo.to_string().contains("los_pct"), "{typo:?}");
        let range = ImpairmentProfile::from_toml("[up]\nloss_pct = 140\n").unwrap_err();
        let ProfileError::Invalid { direction: "up", source: FieldError::OutOfRange { field, value, .. } } = &range
        else {
            panic!("{range:?}")
        };
        assert_eq!((*field, *value), ("loss_pct", 140.0));
        assert!(range.to_string().contains("loss_pct") && range.to_string().contains("140"), "{range}");
    }

    #[test]
    fn a_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[down]\nburst_len = 3\nloss_pct = 100\n").unwrap();
        let err = ImpairmentProfile::named_or_file(path.to_str().unwrap()).unwrap_err();
        let ProfileError::File { path: named, source } = &err else { panic!("{err:?}") };
        assert_eq!(named, &path);
        assert!(
            matches!(
                **source,
                ProfileError::Invalid { direction: "down", source: FieldError::BurstWithoutDelivery { .. } }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(&format!("{}: down: burst_len", path.display())), "{err}");
        // Short bursts cannot carry much loss: 70 % in bursts of 1.5 would have given 60 %.
        let short = DirectionProfile { burst_len: 1.5, loss_pct: 70.0, ..DirectionProfile::default() };
        let err = short.check().unwrap_err();
        assert!(err.to_string().contains("at most 60.0 % loss"), "{err}");
        DirectionProfile { burst_len: 1.5, loss_pct: 60.0, ..DirectionProfile::default() }.check().unwrap();
        // A rate too small for the link's clock (a packet's departure overflowed it) is refused; 0 is no limit.
        for (rate, ok) in [(1e-15, false), (0.5, false), (0.0, true), (1.0, true)] {
            let link = DirectionProfile { rate_kbps: rate, ..DirectionProfile::default() };
            assert_eq!(link.check().is_ok(), ok, "rate_kbps {rate}");
        }
        let missing = ImpairmentProfile::from_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(missing, ProfileError::Read { .. }), "{missing:?}");
    }

    #[test]
    fn profiles_read_as_words() {
        let clean = ImpairmentProfile::default();
        assert_eq!(clean.to_string(), format!("each way: clean (seed {})", clean.seed));
        let mut wifi = clean.clone();
        wifi.up.loss_pct = 5.0;
        wifi.up.delay_ms = 20.0;
        wifi.up.jitter_ms = 5.0;
        wifi.up.jitter_reorders = true;
        let text = wifi.to_string();
        assert!(text.starts_with("up: loss 5 %, delay 20 ms ± 5 ms (reordering); down: clean"), "{text}");
    }
}
