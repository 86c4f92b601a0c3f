//! The communicator context ids the runtime reserves (a leaf module: the
//! error messages, the communicator, the engine and the router all read
//! them).
//!
//! User communicators get ids allocated upwards from 0 (the world
//! communicator); ids with [`SERVICE_COMM_BIT`] set carry a split's internal
//! exchanges, and [`ROUTE_COMM`] carries the router's chunks.

/// Context ids with this bit set carry the internal exchanges of
/// [`Communicator::split`](crate::Communicator::split) of the communicator
/// with the id without it.
pub(crate) const SERVICE_COMM_BIT: u32 = 1 << 31;

/// The communicator id reserved for router traffic: communicator ids are
/// allocated upwards from 0, so no user communicator reaches it.
pub const ROUTE_COMM: u32 = u32::MAX;
