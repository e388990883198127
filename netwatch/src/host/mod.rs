//! Questions about the machine: cgroups, containers, network namespaces, sock_diag, /proc, listen
//! counters, user stacks, clocks.

pub mod cgroup;
pub mod cgroup_watch;
pub mod clock;
pub mod container_id;
pub mod containers;
pub mod netns;
pub mod netstat;
pub mod perfmap;
pub mod procfd;
pub mod recent;
pub mod runtime;
pub mod runtime_events;
#[cfg(test)]
pub mod scratch;
pub mod settings;
#[cfg(test)]
pub mod skip;
pub mod snapshot;
pub mod sockdiag;
pub mod stacks;
pub mod stuck;
pub mod systemd;
pub mod timewait_feed;
