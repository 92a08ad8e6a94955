//! The detector format seam: everything the pipeline and the simulator know of a detector, behind one
//! object-safe trait (as odin-data's receiver knows a detector only through its `FrameDecoder`).
//!
//! A datagram is a format's header followed by its payload. The receiver stores datagrams as they arrive, with
//! the index of the stream (UDP port) each came from; the assembler asks the format to [classify] each one (which
//! frame and block it is, or why it is invalid) and, once a frame is complete or given up on, to [decode] the
//! frame from its datagrams. The simulator asks the format to [encode] datagrams and for the order in which the
//! camera sends them.
//!
//! [classify]: DetectorFormat::classify
//! [decode]: DetectorFormat::decode_frame
//! [encode]: DetectorFormat::encode_datagram

use std::fmt;
use std::sync::Arc;

use crate::subset::{Rect, Streams};

/// Type of a decoded pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelType {
    /// Unsigned 16-bit pixels (native endianness in memory).
    U16,
}

impl PixelType {
    /// Bytes of one pixel.
    pub const fn bytes(self) -> usize {
        match self {
            PixelType::U16 => 2,
        }
    }
}

/// What a valid datagram is: which frame, which block of it, and the detector's sync (shutter) flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// The detector's frame id.
    pub frame_id: u32,
    /// Index of the block within its frame, `0 .. blocks_per_frame`.
    pub index: usize,
    /// The sync flag.
    pub sync: bool,
}

/// Why a datagram is invalid: an index into the format's [`DetectorFormat::invalid_reasons`] and its stable
/// name (a counter name, `assembler.invalid.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidReason {
    index: usize,
    name: &'static str,
}

impl InvalidReason {
    /// Reason `index` of a format's [`DetectorFormat::invalid_reasons`], named `name` (the conformance suite
    /// checks that the two agree).
    pub const fn new(index: usize, name: &'static str) -> Self {
        Self { index, name }
    }

    /// Index in the format's [`DetectorFormat::invalid_reasons`].
    pub const fn index(&self) -> usize {
        self.index
    }

    /// Stable name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// What the simulator tells the encoder about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    /// Frame id.
    pub frame_id: u32,
    /// Block index within the frame, `0 .. blocks_per_frame`.
    pub block: usize,
    /// Frames the camera sent before this one (for running counters in headers).
    pub frame_seq: u64,
    /// The sync (shutter) flag.
    pub sync: bool,
}

/// Why a frame cannot be decoded or a datagram encoded: the caller's buffers do not fit the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not one entry per block of the frame.
    #[error("{found} block entries, a frame has {expected}")]
    Blocks {
        /// Entries given.
        found: usize,
        /// Blocks per frame.
        expected: usize,
    },
    /// A block index out of range.
    #[error("block {block} out of range (a frame has {blocks})")]
    Block {
        /// Index given.
        block: usize,
        /// Blocks per frame.
        blocks: usize,
    },
    /// A buffer of the wrong size.
    #[error("{what} of {found} elements, expected {expected}")]
    Size {
        /// Which buffer.
        what: &'static str,
        /// Size given.
        found: usize,
        /// Size needed.
        expected: usize,
    },
    /// A reason index out of range, or a reason that cannot be produced from bytes alone.
    #[error("invalid reason {0} cannot be crafted")]
    Reason(usize),
}

/// A detector's wire format: geometry, datagram classification, frame decoding and encoding for the simulator.
///
/// Object safe: the pipeline holds a [`Format`] (a `&'static dyn DetectorFormat`) chosen from the
/// [`registry`](crate::registry). Every implementation passes [`crate::conformance::check`].
pub trait DetectorFormat: Send + Sync + fmt::Debug {
    /// Name in the configuration (`mode = "is"`), lowercase.
    fn name(&self) -> &'static str;
    /// Numeric id recorded in the shared region's header; never 0 (0 means no detector), unique in the registry.
    fn id(&self) -> u32;
    /// The detector family a format of several sizes belongs to (`--detector jungfrau`); by default the name.
    fn family(&self) -> &'static str {
        self.name()
    }
    /// Modules of the detector (`--modules N`): within a family, the formats differ by their module count;
    /// by default 1.
    fn modules(&self) -> usize {
        1
    }
    /// One line for humans.
    fn description(&self) -> &'static str;

    /// Rows of a decoded frame.
    fn rows(&self) -> usize;
    /// Columns of a decoded frame.
    fn cols(&self) -> usize;
    /// Type of a decoded pixel.
    fn pixel_type(&self) -> PixelType;
    /// Largest pixel value the detector sends (all significant bits set).
    fn pixel_mask(&self) -> u16;
    /// UDP streams (ports) the detector sends on; stream `s` arrives on port `port_base + s`.
    fn streams(&self) -> usize;
    /// Blocks (datagrams) per frame.
    fn blocks_per_frame(&self) -> usize;
    /// Largest datagram of the format, bytes.
    fn max_datagram(&self) -> usize;

    /// Whether datagrams carry the detector's sync (shutter) flag. A format without one (a JUNGFRAU sends only
    /// while it acquires) reports every block as synchronised, so an acquisition that waits for the flag starts
    /// at the first frame.
    fn has_sync_flag(&self) -> bool {
        true
    }

    /// Names of the invalid reasons [`DetectorFormat::classify`] returns, in index order. They are public counter
    /// names: a format never reorders or renames them.
    fn invalid_reasons(&self) -> &'static [&'static str];
    /// Classifies one datagram that arrived on stream `stream`: the frame and block it is, or why it is invalid.
    /// A stream out of range is an invalid reason too. Never panics, whatever the bytes.
    fn classify(&self, stream: usize, datagram: &[u8]) -> Result<BlockInfo, InvalidReason>;

    /// Decodes a frame from its datagrams: `blocks[i]` is the whole datagram (header included) of block `i`, as
    /// accepted by [`DetectorFormat::classify`], or `None` if it is missing; a missing block's pixels are set to
    /// `fill`. `frame` holds `rows × cols` pixels, row-major.
    fn decode_frame(&self, blocks: &[Option<&[u8]>], frame: &mut [u16], fill: u16) -> Result<(), FormatError>;
    /// Which implementation [`DetectorFormat::decode_frame`] uses on this CPU (for logs).
    fn decoder(&self) -> &'static str;

    /// Bytes of a datagram's header (what [`DetectorFormat::encode_header`] writes).
    fn header_bytes(&self) -> usize;
    /// Bytes of block `block`'s payload.
    fn payload_bytes(&self, block: usize) -> usize;
    /// Writes the header of a datagram into `out[..header_bytes]`.
    fn encode_header(&self, meta: &BlockMeta, out: &mut [u8]) -> Result<(), FormatError>;
    /// Writes the payload of block `block` of `frame` (`rows × cols` pixels) into `out[..payload_bytes(block)]`.
    fn encode_payload(&self, block: usize, frame: &[u16], out: &mut [u8]) -> Result<(), FormatError>;
    /// The block index of the `i`-th datagram the camera sends of a frame, `i` in `0 .. blocks_per_frame`.
    fn send_order(&self, i: usize) -> usize;
    /// The stream block `block` is sent on.
    fn stream_of(&self, block: usize) -> usize;

    /// Makes a valid datagram invalid for reason `reason` by changing its header bytes and/or its length `len`
    /// (a shorter length cuts the datagram; a longer one is clamped by the caller's buffer). For tests and the
    /// simulator's fault injection.
    fn corrupt(&self, reason: usize, header: &mut [u8], len: &mut usize) -> Result<(), FormatError>;
    /// The reasons the simulator's `corrupt` fault draws from (indices into
    /// [`DetectorFormat::invalid_reasons`]): faults a network or a device really produces.
    fn sim_faults(&self) -> &'static [usize];

    /// Where the pixels of stream `stream` lie in a decoded frame: every block the stream sends falls in this
    /// rectangle, and the streams' rectangles tile the frame. `None` for a stream out of range, and for a format
    /// that does not say (it can then only be received whole).
    fn stream_rect(&self, stream: usize) -> Option<Rect> {
        let _ = stream;
        None
    }

    /// This format restricted to the detector's streams `streams` (not all of them), for a pipeline that
    /// receives only those (see [`crate::subset`]): its stream `i` is the `i`-th of `streams`, its blocks are
    /// theirs, and its frame holds their pixels, each stream's rectangle of the same size as in the whole frame,
    /// placed as its own [`DetectorFormat::stream_rect`] says. `None` if the format cannot be split (the default).
    fn restrict(&self, streams: &Streams) -> Option<Arc<dyn DetectorFormat>> {
        let _ = streams;
        None
    }

    /// Pixels of a decoded frame.
    fn frame_pixels(&self) -> usize {
        self.rows() * self.cols()
    }

    /// Bytes of a decoded frame.
    fn frame_bytes(&self) -> usize {
        self.frame_pixels() * self.pixel_type().bytes()
    }

    /// Writes the whole datagram of `meta` (header, then the payload from `frame`) into `out` and returns its
    /// length.
    fn encode_datagram(&self, meta: &BlockMeta, frame: &[u16], out: &mut [u8]) -> Result<usize, FormatError> {
        if meta.block >= self.blocks_per_frame() {
            return Err(FormatError::Block { block: meta.block, blocks: self.blocks_per_frame() });
        }
        let (h, p) = (self.header_bytes(), self.payload_bytes(meta.block));
        if out.len() < h + p {
            return Err(FormatError::Size { what: "datagram buffer", found: out.len(), expected: h + p });
        }
        self.encode_header(meta, &mut out[..h])?;
        self.encode_payload(meta.block, frame, &mut out[h..h + p])?;
        Ok(h + p)
    }
}

/// A detector format chosen from the [`registry`](crate::registry): a copyable `&'static dyn DetectorFormat`,
/// named in configuration files by its [`DetectorFormat::name`] and in the region by its id.
#[derive(Clone, Copy)]
pub struct Format(&'static dyn DetectorFormat);

impl Format {
    /// Wraps a format (the registry's entries are made with this).
    pub const fn new(f: &'static dyn DetectorFormat) -> Self {
        Self(f)
    }

    /// The format.
    pub const fn get(self) -> &'static dyn DetectorFormat {
        self.0
    }
}

impl std::ops::Deref for Format {
    type Target = dyn DetectorFormat;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for Format {}

impl fmt::Debug for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Format({:?})", self.0.name())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl Default for Format {
    /// The registry's first format (K2 IS).
    fn default() -> Self {
        crate::registry::FORMATS[0]
    }
}

/// A name that is no registered format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {name:?} (expected one of {known})")]
pub struct UnknownFormat {
    name: String,
    known: String,
}

impl std::str::FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::registry::by_name(s).ok_or_else(|| UnknownFormat {
            name: s.to_string(),
            known: crate::registry::FORMATS.iter().map(|f| format!("{:?}", f.name())).collect::<Vec<_>>().join(", "),
        })
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> serde::Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Exact (lowercase) names in files, as serde's `rename_all = "lowercase"` took them.
        let name = String::deserialize(d)?;
        match name.parse::<Format>() {
            Ok(f) if f.name() == name => Ok(f),
            Ok(f) => Err(serde::de::Error::custom(format!("unknown mode {name:?} (did you mean {:?}?)", f.name()))),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}
