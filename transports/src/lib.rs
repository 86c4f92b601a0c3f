//! zccl transports: how bytes move between ranks.
//!
//! **Not implemented yet.** This crate is the home of the TCP transport (several
//! sockets per peer, each bound to one NIC), the shared-memory transport between
//! ranks of one host, and the feature-gated RDMA verbs and CUDA device-memory
//! transports. It holds no code today: nothing here pretends to move data.
