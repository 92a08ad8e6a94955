//! Detector wire formats, pixel decoding, and a simulator.
//!
//! The first detector is the Gatan K2 IS (and its Summit mode): each of eight sectors sends UDP datagrams, one
//! block of pixels each, to its own port. [`header`] parses and validates the 40-byte block header, [`decode`]
//! turns payloads into u16 pixels placed in a frame, [`mode`] holds the geometry, [`pattern`] the simulator's
//! pixel formula and [`sim`] the simulator.

#![deny(missing_docs)]

pub mod decode;
pub mod header;
pub mod mode;
pub mod pattern;
pub mod sim;

pub use decode::{Decoder, PlaceError};
pub use header::{BlockHeader, HeaderError};
pub use mode::{Geometry, Mode, SECTORS};
