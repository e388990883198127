//! From the kernel (or a recording) to a command: the [`sink::Sink`] trait, the stream loop,
//! recording and replay.

pub mod json_line;
pub mod pending;
pub mod record;
pub mod run;
pub mod session;
pub mod sink;
pub mod stream;
