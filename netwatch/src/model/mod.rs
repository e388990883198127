//! The model: plain Rust over decoded [`event::Event`]s. No I/O, no statics, no clap: it is
//! tested from synthetic and recorded streams without root.

pub mod analysis;
pub mod comm;
pub mod event;
pub mod filter;
pub mod frames;
pub mod names;
pub mod pad;
pub mod selection;
pub mod timewait;
pub mod tracker;
