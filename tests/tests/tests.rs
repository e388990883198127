//! netwatch's end-to-end tests, as one test binary: real BPF programs and real TCP traffic in
//! network namespaces the tests create. Most need root (`require_root`); run them one at a
//! time (`cargo xtask test`, i.e. `--test-threads=1`): they count BPF programs and kernel
//! counters, which parallel tests would disturb.

// What the modules share: the tracer harness, known workloads, /proc and BPF look-ups.
mod support;

// In Node, Java and Python servers and clients, `leaks` names the handler from the perf map
// (first send or receive), or says why it cannot.
mod codepaths;
// `completions` for every shell the README names load or name every subcommand; the man page.
mod completions;
// Real podman containers, one with Kubernetes labels: trace, life, leaks, Prometheus and a
// replay name their pod, namespace and container, from the first event of each.
mod containers;
// Filters (-p, -L, -4/-6, --comm, states, a bad expression) act where they should and equal
// filtering afterwards, on trace, life and report; cgroups removed before their events are
// read are still named.
mod filters;
// `leaks` finds forgotten sockets, live and --once, with the real holder, fds, code path, cgroup;
// a `leaks --record` run replays byte for byte.
mod leaks;
// `report`, `life` and `analyze` counts equal the kernel's counters; a replay equals the run.
mod lifecycle;
// Raw and classic tracepoint programs give the same events; without what raw ones need,
// the classic ones run, with a warning each.
mod paths;
// Recordings earlier versions wrote (JSON lines, the first binary format, a `leaks` recording
// of the second) replay to what those versions printed.
mod recordings;
// Under load: a stopped reader recovers, a soak stays flat and exact, stops leave nothing.
mod robustness;
// 200,000 live sockets at once, every one attributed to the process that held it.
mod scale;
// `serve`'s metrics, scraped by Prometheus, equal a known workload; bad requests get answers;
// TLS, client certificates and basic auth from a web config, read again when it changes; the
// capabilities kept after attach.
mod serve;
// The stack captured at accept() names the accepting function, its source line and callers.
mod stacks;
// `life`'s records field by field (bytes, closers, each kind of end), IPv4 and IPv6, as text too.
mod life;
// `life` agrees with libbpf-tools tcplife connection by connection and fixes its wrong pids.
mod tcplife;
// `top` shows a known workload exactly, in a real terminal and as plain summaries.
mod top;
// TIME_WAIT under port reuse equals ss; the forecast meets real exhaustion; overflow is counted.
mod timewait;
// `trace` events (transitions, owners, resets, retransmits, losses) match the kernel's counts.
mod trace;
