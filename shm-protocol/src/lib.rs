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
//! assert_eq!(&read.bytes()[..5], b"hello");
//! consumer.commit(read.seq() + 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod alloc_count;
pub mod consumer;
pub mod control;
pub mod layout;
#[cfg(feature = "logging")]
pub mod logging;
pub mod messages;
pub mod pipeline;
pub mod region;
pub mod ring;
pub mod session;
pub mod wait;

pub use control::{Connection, ControlError, ControlListener, PeerCredentials, Received};
pub use region::{Access, Region, RegionError};
pub use ring::{Consumer, Producer, ReadSlot, Reader, Ring, RingError, StartAt, WriteSlot};
