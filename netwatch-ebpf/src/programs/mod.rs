//! The tracepoint programs, one file per program or family of programs, so that what each
//! program decides reads on its own; what they share is in `helpers` and `record`.
//!
//! Each entry point is thin: it runs its `try_*` function, which returns `None` when it stops
//! early (a record it cannot read, a socket it does not follow), and returns 0 either way.
//!
//! - [`set_state`]: `nw_set_state`, every TCP state transition, where owners are captured;
//! - [`accept`]: `nw_accept`, where the accepting process becomes the new socket's owner;
//! - [`first_read`]: `nw_first_read`, the same owner learnt at the first read, for the modes
//!   that do not pay for a syscall tracepoint;
//! - [`simple`]: `nw_retransmit`, `nw_synack_rtx`, `nw_recv_reset`, `nw_send_reset`,
//!   `nw_destroy_sock`: one event each, with the owner remembered in `SOCKETS`.

mod accept;
mod first_read;
mod set_state;
mod simple;
