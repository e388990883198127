//! The kernel side, seen from user space: privileges, tracefs and BTF layouts, loading and
//! attaching the programs, the ring buffer and the kernel-side counters.

pub mod btf;
pub mod layout;
pub mod offsets;
pub mod privileges;
pub mod probe;
pub mod release;
pub mod tracefs;
pub mod verifier;
