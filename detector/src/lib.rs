//! Detector wire formats, pixel decoding, and a simulator.
//!
//! The pipeline knows a detector only through [`DetectorFormat`] ([`mod@format`]): its geometry, how to classify a
//! datagram (frame, block, sync flag, or a typed invalid reason), how to decode a frame from its datagrams and
//! how to encode them for the simulator. [`registry`] lists the formats; [`conformance`] is the suite every
//! format passes. The first family is the Gatan K2 ([`k2`]: IS and Summit modes), the second PSI's JUNGFRAU ([`jungfrau`]). [`pattern`] holds the
//! simulator's pixel formula and [`sim`] the simulator. [`subset`] is a pipeline's part of a detector (some of
//! its streams: `--sectors`) and where that part lies in the whole frame.

#![deny(missing_docs)]

pub mod conformance;
pub mod format;
pub mod jungfrau;
pub mod k2;
pub mod pattern;
pub mod registry;
pub mod sim;
pub mod subset;

pub use format::{BlockInfo, BlockMeta, DetectorFormat, Format, FormatError, InvalidReason, PixelType};
pub use subset::{Placement, Streams, View};
