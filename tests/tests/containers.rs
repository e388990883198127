//! Real containers, as root: podman (Debian's package) runs them on runc from a root directory
//! the test makes (the tests' `tcpdrive` with its shared libraries: no image, no registry), in the test's own network namespaces (`--network ns:/run/netns/NAME`), one with
//! the labels the kubelet sets (`io.kubernetes.pod.name` ...), one plain. netwatch must name
//! the pod, namespace and container of their sockets in `trace` (JSON and `-w`), `life`,
//! `leaks`, the metrics a real Prometheus scrapes from `serve`, and a replay of `--record`
//! after the containers and the runtime's API are gone. The containers connect the moment
//! they start, before any listing of the runtime could have named them: netwatch holds their
//! first events until the runtime answers about them, so those are named too. Containers that
//! connect once and are removed (`--rm`) within milliseconds, before a question could reach
//! the runtime, are named by the runtime's event stream (their `create`).
//!
//! The names come from the Docker-compatible API of `podman system service` on
//! `/run/podman/podman.sock` (what the `podman.socket` unit serves): started by the test when
//! nothing answers there, and stopped afterwards. Every container the test starts is removed
//! (`podman rm -f`) on drop, also when the test fails.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::serve::{Prometheus, poll, server_ports, with_filter, workload_filter};
use crate::support::{Scratch, Tracer, analyze, eventually, json_lines, tcpdrive};
use netwatch_tests::{
    NetPair, ReadyChild, Side, output_with_timeout, require_root, unique_port, wait_with_timeout,
};
use serde_json::Value;

const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
/// crun, podman's default runtime, fails on setrlimit on these machines.
const RUNC: &str = "/usr/sbin/runc";

/// Connections the plain container makes, and sockets the pod's container leaks.
const N: u64 = 6;
const L: u64 = 4;

/// `podman system service` on [`PODMAN_SOCKET`], when the test had to start it.
struct PodmanApi {
    child: Option<Child>,
}

impl PodmanApi {
    /// The API on [`PODMAN_SOCKET`]: the one answering there, else one started now.
    fn ready() -> PodmanApi {
        if api_get("/_ping").is_some() {
            return PodmanApi { child: None };
        }
        let _ = fs::remove_file(PODMAN_SOCKET);
        fs::create_dir_all(Path::new(PODMAN_SOCKET).parent().expect("socket dir"))
            .expect("/run/podman");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{PODMAN_SOCKET}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start podman (`cargo xtask setup` installs it): {e}")
            });
        let api = PodmanApi { child: Some(child) };
        assert!(
            eventually(Duration::from_secs(30), || api_get("/_ping").is_some()),
            "podman system service does not answer on {PODMAN_SOCKET} after 30 s"
        );
        api
    }

    /// Stops the API if the test started it: a replay must not need it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_with_timeout(&mut child, 30);
            let _ = fs::remove_file(PODMAN_SOCKET);
        }
    }
}

impl Drop for PodmanApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET path` on the podman API, its body when it answered 2xx.
fn api_get(path: &str) -> Option<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sSf", "--max-time", "5", "--unix-socket", PODMAN_SOCKET])
        .arg(format!("http://d{path}"));
    let out = output_with_timeout(cmd, 10);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A container started by `podman run`, removed on drop.
struct Container {
    name: String,
    /// Where podman writes its id when it creates it.
    cidfile: PathBuf,
    run: ReadyChild,
}

impl Container {
    /// `podman run` of `argv` in `rootfs`, in network namespace `netns`, with `labels`: `argv`
    /// runs at once.
    fn start(
        name: &str,
        rootfs: &Path,
        scratch: &Path,
        netns: &str,
        labels: &[(&str, &str)],
        argv: &[&str],
    ) -> Container {
        let cidfile = scratch.join(format!("{name}.cid"));
        let mut cmd = Command::new("podman");
        cmd.args(["--runtime", RUNC, "run", "--rm", "--name", name])
            .arg(format!("--cidfile={}", cidfile.display()))
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg(format!("--network=ns:/run/netns/{netns}"));
        for (k, v) in labels {
            cmd.arg(format!("--label={k}={v}"));
        }
        cmd.arg("--rootfs").arg(rootfs).args(argv);
        Container {
            name: name.to_string(),
            cidfile,
            run: ReadyChild::spawn_background(cmd),
        }
    }

    /// Its full id, from the file podman writes when it creates it (bounded).
    fn id(&self) -> String {
        let id = poll(Duration::from_secs(30), || {
            let id = fs::read_to_string(&self.cidfile).ok()?;
            (id.trim().len() == 64).then(|| id.trim().to_string())
        });
        id.unwrap_or_else(|| {
            panic!(
                "podman wrote no id for {} in 30 s; it printed: {:?}",
                self.name,
                self.run.stdout_lines()
            )
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let mut rm = Command::new("podman");
        rm.args(["rm", "-f", "-t", "0", &self.name]);
        let _ = output_with_timeout(rm, 60);
        let _ = self.run.wait(10);
    }
}

/// A root directory for the containers: `tcpdrive` with the shared libraries `ldd` names, at
/// their paths.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("rootfs/bin");
    fs::copy(tcpdrive(), bin.join("tcpdrive")).expect("copy tcpdrive");
    let mut ldd = Command::new("ldd");
    ldd.arg(tcpdrive());
    let out = output_with_timeout(ldd, 30);
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(to.parent().expect("lib dir")).expect("lib dir");
        fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    root
}

/// The events (or connections) whose owner's cgroup is the container's.
fn of_container<'a>(lines: &'a [Value], id: &str) -> Vec<&'a Value> {
    let cgroup = format!("/libpod_parent/libpod-{id}");
    lines
        .iter()
        .filter(|l| l["cgroup"] == cgroup.as_str())
        .collect()
}

/// Whether `line` names the pod's container as the kubelet's labels say, with its id.
fn names_the_pod(line: &Value, id: &str) -> bool {
    line["namespace"] == "prod"
        && line["pod"] == "shop-7f"
        && line["container"] == "web"
        && line["container_id"] == id
}

/// Whether `line` names the plain container by its name and id only.
fn names_the_plain_one(line: &Value, name: &str, id: &str) -> bool {
    line["container"] == name
        && line["container_id"] == id
        && line.get("pod").is_none()
        && line.get("namespace").is_none()
}

#[test]
fn root_containers_are_named_by_pod_namespace_and_container() {
    if !require_root("root_containers_are_named_by_pod_namespace_and_container") {
        return;
    }
    let mut api = PodmanApi::ready();
    let pair = NetPair::new();
    let server = pair.server_v4();
    let [p_leak, p_plain] = server_ports::<2>();
    let filter = workload_filter(&pair, &[p_leak, p_plain]);
    let scratch = Scratch::new("containers");
    let root = rootfs(&scratch.path(""));
    let recording = scratch.path("trace.rec");

    let nw = SocketAddr::from((Ipv4Addr::LOCALHOST, unique_port()));
    let listen = nw.to_string();
    let serve = Tracer::start(&with_filter(&["serve", "--listen", &listen], &filter));
    let rec = recording.to_str().expect("UTF-8 path");
    let trace = Tracer::start(&with_filter(&["trace", "--json", "--record", rec], &filter));
    let trace_wide = Tracer::start(&with_filter(&["trace", "-w"], &filter));
    let life = Tracer::start(&with_filter(&["life", "--json"], &filter));
    let mut leaks = Tracer::start(&["leaks", "--json", "--min-age", "1s", "--interval", "1s"]);
    let prom = Prometheus::start(nw);

    // The pod's container leaks L accepted sockets in CLOSE_WAIT; the plain one makes N
    // orderly connections to a server outside any container. Both start their work the
    // moment they start: no wait for netwatch to have heard of them.
    let tag = std::process::id();
    let web = Container::start(
        &format!("netwatch-test-web-{tag}"),
        &root,
        &scratch.path(""),
        pair.ns(Side::Server),
        &[
            ("io.kubernetes.pod.name", "shop-7f"),
            ("io.kubernetes.pod.namespace", "prod"),
            ("io.kubernetes.container.name", "web"),
        ],
        &[
            "/bin/tcpdrive",
            "serve-leak",
            &format!("{server}:{p_leak}"),
            "--count",
            &L.to_string(),
        ],
    );
    let mut plain_server = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &[
            "serve",
            &format!("{server}:{p_plain}"),
            "--count",
            &N.to_string(),
            // Each connect waits for the last one's hold: the plain container lives about
            // N x 200 ms, so that its runtime's answer, not only its `create` event, can name
            // it (the quick containers' test covers those gone before that answer).
            "--hold-ms",
            "200",
        ],
    ));
    let plain_name = format!("netwatch-test-plain-{tag}");
    let mut plain = Container::start(
        &plain_name,
        &root,
        &scratch.path(""),
        pair.ns(Side::Client),
        &[],
        &[
            "/bin/tcpdrive",
            "connect",
            &format!("{server}:{p_plain}"),
            "--count",
            &N.to_string(),
        ],
    );
    let (web_id, plain_id) = (web.id(), plain.id());
    assert!(
        eventually(Duration::from_secs(10), || {
            web.run
                .stdout_lines()
                .iter()
                .any(|l| l.starts_with("READY"))
        }),
        "the web container's server never said READY: {:?}",
        web.run.stdout_lines()
    );
    let out = output_with_timeout(
        pair.exec(
            Side::Client,
            &tcpdrive(),
            &[
                "connect",
                &format!("{server}:{p_leak}"),
                "--count",
                &L.to_string(),
            ],
        ),
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plain.run.wait(60).success(),
        "{:?}",
        plain.run.stdout_lines()
    );
    assert!(plain_server.wait(30).success());

    // leaks: the pod's container holds the L sockets.
    let snap = leaks.wait_for_json_line(
        "a close_wait group of the pod's container",
        Duration::from_secs(30),
        |s| {
            s["groups"].as_array().is_some_and(|gs| {
                gs.iter().any(|g| {
                    g["kind"] == "close_wait" && g["sockets"] == L && names_the_pod(g, &web_id)
                })
            })
        },
    );
    eprintln!("leaks: {snap}");

    // Prometheus: the gauge of the pod's leak, and the plain container's connects, by name.
    let q_leak =
        r#"sum(netwatch_close_wait_sockets{namespace="prod",pod="shop-7f",container="web"})"#;
    assert_eq!(prom.wait_value(q_leak, L as f64), L as f64, "{q_leak}");
    let q_plain = format!(
        r#"sum(netwatch_connects_total{{outcome="established",container="{plain_name}"}})"#
    );
    assert_eq!(prom.wait_value(&q_plain, N as f64), N as f64, "{q_plain}");
    for (labels, _) in prom.query(&format!(
        r#"netwatch_connects_total{{container="{plain_name}"}}"#
    )) {
        assert!(
            !labels.contains_key("pod") && !labels.contains_key("namespace"),
            "a plain container has no pod: {labels:?}"
        );
    }

    // Removing the pod's container closes its sockets: their connections end, named still.
    drop(web);
    drop(plain);
    let life_done = life.stop();
    let trace_done = trace.stop();
    let (status, wide, wide_err) = trace_wide.stop_output();
    assert!(status.success(), "trace -w: {status}\n{wide_err}");
    drop(leaks);
    drop(serve);
    drop(prom);
    api.stop();

    // trace --json: every event of either container names it; the pod's accepted L
    // connections, the plain one connected N times.
    let web_events = of_container(&trace_done.events, &web_id);
    let plain_events = of_container(&trace_done.events, &plain_id);
    for ev in &web_events {
        assert!(names_the_pod(ev, &web_id), "{ev}");
    }
    for ev in &plain_events {
        assert!(names_the_plain_one(ev, &plain_name, &plain_id), "{ev}");
    }
    let accepts = web_events.iter().filter(|e| e["kind"] == "accept").count() as u64;
    assert_eq!(accepts, L, "accepts in the pod's container");
    let connects = plain_events
        .iter()
        .filter(|e| e["kind"] == "state" && e["new_state"] == "SYN_SENT")
        .count() as u64;
    assert_eq!(connects, N, "connects of the plain container");

    // trace -w: the CONTAINER column.
    let header = wide.lines().next().unwrap_or_default();
    assert!(header.contains("CONTAINER"), "{header}");
    let accept_lines = wide
        .lines()
        .filter(|l| l.contains("ACCEPT") && l.contains(" prod/shop-7f/web "))
        .count() as u64;
    assert_eq!(accept_lines, L, "{wide}");
    let plain_lines = wide
        .lines()
        .filter(|l| l.contains("CLOSE -> SYN_SENT") && l.contains(&format!(" {plain_name} ")))
        .count() as u64;
    assert_eq!(plain_lines, N, "{wide}");

    // life: the L connections of the pod (ended by the removal) and the N of the plain one.
    let web_conns = of_container(&life_done.events, &web_id);
    let plain_conns = of_container(&life_done.events, &plain_id);
    assert_eq!(web_conns.len() as u64, L, "{}", life_done.stdout);
    assert_eq!(plain_conns.len() as u64, N, "{}", life_done.stdout);
    assert!(
        web_conns.iter().all(|c| names_the_pod(c, &web_id)),
        "{}",
        life_done.stdout
    );
    assert!(
        plain_conns
            .iter()
            .all(|c| names_the_plain_one(c, &plain_name, &plain_id)),
        "{}",
        life_done.stdout
    );

    // The recording, replayed with no container and no runtime API left: the names the live
    // run printed, the container filters decided on them.
    let replayed = json_lines(&analyze(&recording, &["--json"]));
    assert_eq!(
        replayed, trace_done.events,
        "a replay prints what the live run printed"
    );
    let pod_only = json_lines(&analyze(&recording, &["--json", "--pod", "shop-7f"]));
    assert_eq!(pod_only.len(), web_events.len());
    assert!(pod_only.iter().all(|e| names_the_pod(e, &web_id)));
    let by_name = json_lines(&analyze(
        &recording,
        &["--json", "--container", &plain_name],
    ));
    assert_eq!(by_name.len(), plain_events.len());
    let none = analyze(&recording, &["--json", "--k8s-namespace", "dev"]);
    assert!(none.trim().is_empty(), "{none}");
    let life_wide = analyze(&recording, &["--life", "-w"]);
    let pod_rows = life_wide
        .lines()
        .filter(|l| l.contains(" prod/shop-7f/web "))
        .count() as u64;
    assert_eq!(pod_rows, L, "{life_wide}");
}

/// Containers [`root_containers_gone_before_the_runtime_answers_are_named`] runs one after the
/// other: every one must be named, not most.
const QUICK_RUNS: u64 = 8;

/// `podman run --rm` containers that connect once and are gone within milliseconds: a question
/// about one reaches podman after its removal, so only its `create` event can name it. Without
/// the event stream about half of them kept their ids only (4 of 8 in one run).
#[test]
fn root_containers_gone_before_the_runtime_answers_are_named() {
    if !require_root("root_containers_gone_before_the_runtime_answers_are_named") {
        return;
    }
    let _api = PodmanApi::ready();
    let pair = NetPair::new();
    let server = pair.server_v4();
    let [port] = server_ports::<1>();
    let filter = workload_filter(&pair, &[port]);
    let scratch = Scratch::new("containers-quick");
    let root = rootfs(&scratch.path(""));
    let trace = Tracer::start(&with_filter(&["trace", "--json"], &filter));
    let addr = format!("{server}:{port}");
    let mut listener = ReadyChild::spawn(pair.exec(
        Side::Server,
        &tcpdrive(),
        &["serve", &addr, "--count", &QUICK_RUNS.to_string()],
    ));

    // Each container connects once and exits within milliseconds; `--rm` removes it at once,
    // before a question about it could reach the runtime.
    let tag = std::process::id();
    let mut ran = Vec::new();
    for n in 0..QUICK_RUNS {
        let pod = format!("quick-{n}");
        let mut c = Container::start(
            &format!("netwatch-test-quick-{tag}-{n}"),
            &root,
            &scratch.path(""),
            pair.ns(Side::Client),
            &[
                ("io.kubernetes.pod.name", &pod),
                ("io.kubernetes.pod.namespace", "batch"),
                ("io.kubernetes.container.name", "once"),
            ],
            &["/bin/tcpdrive", "connect", &addr, "--count", "1"],
        );
        let id = c.id();
        assert!(c.run.wait(60).success(), "{:?}", c.run.stdout_lines());
        ran.push((pod, id));
    }
    assert!(listener.wait(30).success());
    let done = trace.stop();

    let mut unnamed = Vec::new();
    for (pod, id) in &ran {
        let events = of_container(&done.events, id);
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == "state" && e["new_state"] == "SYN_SENT"),
            "no connect of container {id} (pod {pod}) traced: {:?}",
            done.stderr
        );
        let named = |ev: &&Value| {
            ev["namespace"] == "batch"
                && ev["pod"] == pod.as_str()
                && ev["container"] == "once"
                && ev["container_id"] == id.as_str()
        };
        if let Some(ev) = events.iter().find(|ev| !named(ev)) {
            unnamed.push(format!("{pod}: {ev}"));
        }
    }
    assert!(
        unnamed.is_empty(),
        "{} of {QUICK_RUNS} quick containers have events without their names:\n{}",
        unnamed.len(),
        unnamed.join("\n")
    );
}
