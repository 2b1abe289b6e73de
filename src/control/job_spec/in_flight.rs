//! `max_in_flight` of a postgres sink: how many target transactions it may send before the
//! oldest one's outcome is back, as a number or `"auto"` (chosen from the round trip to
//! the target, measured when the sink connects).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Largest accepted number.
pub const MAX_MAX_IN_FLIGHT: usize = 64;

/// A postgres sink's `max_in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxInFlight {
    /// Chosen from the target's round trip when the sink connects (the default).
    #[default]
    Auto,
    /// This many, `1..=MAX_MAX_IN_FLIGHT`.
    Fixed(usize),
}

impl Serialize for MaxInFlight {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxInFlight::Auto => ser.serialize_str("auto"),
            MaxInFlight::Fixed(n) => ser.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for MaxInFlight {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MaxInFlight;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a whole number from 1 to {MAX_MAX_IN_FLIGHT} or \"auto\""
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaxInFlight, E> {
                usize::try_from(v)
                    .map(MaxInFlight::Fixed)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MaxInFlight, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MaxInFlight, E> {
                match v {
                    "auto" => Ok(MaxInFlight::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        de.deserialize_any(V)
    }
}

impl MaxInFlight {
    /// The fixed number, `None` for `auto`.
    pub fn fixed(self) -> Option<usize> {
        match self {
            MaxInFlight::Auto => None,
            MaxInFlight::Fixed(n) => Some(n),
        }
    }
}
