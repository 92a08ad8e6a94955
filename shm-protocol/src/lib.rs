//! ringdaq's shared-memory protocol: the region, its rings, waiting, and the control channel.
//!
//! Every process of a ringdaq pipeline, and every external consumer, maps one sealed memfd: the [`Region`].
//! Its first page ([`layout::RegionHeader`]) names the layout; below it live [`ring::Ring`]s of fixed slots with
//! 64-bit cursors. Processes find each other and exchange the memfd over a [`control::Connection`].
//!
//! ```
//! use shm_protocol::layout::{ConsumerMode, Geometry, RegionSpec, RingKind, RingSpec};
//! use shm_protocol::ring::StartAt;
//! use shm_protocol::Region;
//!
//! let region = Region::create(&RegionSpec {
//!     geometry: Geometry::default(),
//!     rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: 8, slot_bytes: 64, max_consumers: 1 }],
//!     app_bytes: 0,
//! })?;
//! let ring = region.ring(0)?;
//! ring.activate_consumer(0, ConsumerMode::Gating, StartAt::Seq(0))?;
//! let mut producer = ring.producer()?;
//! let mut consumer = ring.consumer(0)?;
//!
//! let mut slot = producer.claim(None)?;
//! slot.bytes_mut()[..5].copy_from_slice(b"hello");
//! slot.publish();
//!
//! let read = consumer.next(None)?;
//! let seq = read.seq();
//! assert_eq!(&read.bytes().ok_or("a gating consumer's slot is stable")?[..5], b"hello");
//! consumer.commit(seq + 1); // `read` cannot be used past here: the producer may reuse its slot

//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

// The transport: a region of rings, waiting, and the control channel. None of it imports `pipeline`.
pub mod control;
pub mod layout;
pub mod region;
pub mod ring;
pub mod wait;

// Above the transport: ringdaq's pipeline (its records, messages, sessions and consumers), and process utilities.
pub mod alloc_count;
#[cfg(feature = "logging")]
pub mod logging;
pub mod pipeline;

// The pipeline's modules under the short paths every ringdaq crate uses.
pub use pipeline::{consumer, messages, session};

pub use control::{Connection, ControlError, ControlListener, PeerCredentials, Received};
pub use region::{Access, Region, RegionError};
pub use ring::{Consumer, Producer, ReadSlot, Reader, Ring, RingError, StartAt, WriteSlot};
