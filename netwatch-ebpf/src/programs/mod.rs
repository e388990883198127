//! The tracepoint programs, one file per program or family of programs, so that what each
//! program decides reads on its own; what they share is in `helpers`, `record` and `sock`.
//!
//! Every TCP tracepoint has two entry points: the classic one (`nw_*`, `#[tracepoint]`), which
//! copies the formatted record, and the raw one (`nwr_*`, `#[raw_tracepoint]`), which reads
//! the socket its arguments point at. User space attaches one of them. Each entry point is
//! thin: it takes its scratch slot and runs a body that returns `None` when it stops early (a
//! record it cannot read, a socket it does not follow); the two entry points of a tracepoint
//! share everything after the reading, so they emit the same event.
//!
//! - [`set_state`]: `nw_set_state`/`nwr_set_state`, every TCP state transition, where owners
//!   are captured;
//! - [`accept`]: `nw_accept` (classic only: a raw `sys_exit` program would run at every
//!   syscall), where the accepting process becomes the new socket's owner;
//! - [`first_read`]: `nw_first_read`/`nwr_first_read`, the same owner learnt at the first read,
//!   for the modes that do not pay for a syscall tracepoint;
//! - [`first_use`]: `nw_first_send`/`nwr_first_send` and `nw_first_recv`/`nwr_first_recv`,
//!   the user stack at a socket's first send and first receive (code-path modes only);
//! - [`simple`]: retransmits, SYN-ACK retransmits, resets received and sent, destruction
//!   (`nw_retransmit`, `nw_synack_rtx`, `nw_recv_reset`, `nw_send_reset`, `nw_destroy_sock`,
//!   and `nwr_*` for each): one event each, with the owner remembered in `SOCKETS`.

mod accept;
mod first_read;
mod first_use;
mod set_state;
mod simple;
