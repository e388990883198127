//! What the container runtimes say about their containers: names and labels, by id.
//!
//! Why: a cgroup path gives a container's id only (see [`crate::host::container_id`]); its
//! name, and for Kubernetes its pod and namespace, are the runtime's. Read where they are
//! cheapest, without a client library per runtime:
//! - containerd and CRI-O write each container's OCI bundle `config.json` on disk, with the
//!   Kubernetes names as annotations (containerd: `io.kubernetes.cri.container-name`,
//!   `…sandbox-name`, `…sandbox-namespace`; CRI-O: the kubelet's labels
//!   `io.kubernetes.container.name`, `io.kubernetes.pod.name`, `io.kubernetes.pod.namespace`);
//! - Docker and podman answer the Docker API on a unix socket (`GET /containers/json`: every
//!   running container's names and labels in one answer; with `all` and an `id` filter, those
//!   of the containers asked about, whatever their state). podman's own on-disk state (a
//!   BoltDB file) is not read: `podman system service` (the `podman.socket` unit) serves the
//!   API at `/run/podman/podman.sock`. The same API's event stream names a container when
//!   it is created ([`crate::host::runtime_events`]).
//!
//! The Kubernetes names come from the kubelet's labels; a plain container has its name only.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::{host::container_id::container_id, model::names::Container};

/// Where containerd keeps its tasks' bundles: `<root>/<namespace>/<id>/config.json`.
pub const CONTAINERD_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";
/// Where CRI-O (and podman, without the names) keeps its bundles:
/// `<root>/<id>/userdata/config.json`.
pub const CRIO_CONTAINERS: &str = "/run/containers/storage/overlay-containers";
/// The Docker API sockets: Docker's, and podman's `podman.socket` unit's.
pub const API_SOCKETS: [&str; 2] = ["/run/docker.sock", "/run/podman/podman.sock"];

/// How long one runtime's API may take to answer a listing.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// The places one host's runtimes are asked.
#[derive(Clone, Debug)]
pub struct Sources {
    pub containerd_tasks: PathBuf,
    pub crio_containers: PathBuf,
    pub api_sockets: Vec<PathBuf>,
}

impl Sources {
    /// This host's standard places.
    pub fn host() -> Sources {
        Sources {
            containerd_tasks: CONTAINERD_TASKS.into(),
            crio_containers: CRIO_CONTAINERS.into(),
            api_sockets: API_SOCKETS.iter().map(PathBuf::from).collect(),
        }
    }

    /// Every container the runtimes run now, by id, with what they say about it; `known`
    /// (ids already named) are not read from disk again. A runtime that is absent or does
    /// not answer gives nothing.
    pub async fn list(&self, known: &dyn Fn(&str) -> bool) -> HashMap<String, Container> {
        self.ask(known, "/containers/json").await
    }

    /// What the runtimes say about the containers `ids`, running or not (one that has just
    /// started may not be running yet in its runtime's eyes). Ids no runtime names are absent.
    pub async fn lookup(&self, ids: &[String]) -> HashMap<String, Container> {
        self.ask(&|id| !ids.iter().any(|i| i == id), &api_query(ids))
            .await
    }

    /// The bundles on disk but those `skip` says, and the APIs' answers to `GET path`.
    async fn ask(&self, skip: &dyn Fn(&str) -> bool, path: &str) -> HashMap<String, Container> {
        let mut found = HashMap::new();
        for (id, c) in
            bundles(&self.containerd_tasks, 2, skip).chain(bundles(&self.crio_containers, 1, skip))
        {
            found.insert(id, c);
        }
        for socket in &self.api_sockets {
            if !socket.exists() {
                continue;
            }
            match tokio::time::timeout(API_TIMEOUT, api_list(socket, path)).await {
                Ok(Ok(list)) => {
                    for c in list {
                        // The API's names win over a bundle's without any.
                        found.insert(c.id.clone(), c);
                    }
                }
                Ok(Err(e)) => log::debug!("{}: {e}", socket.display()),
                Err(_) => log::debug!("{}: no answer in {API_TIMEOUT:?}", socket.display()),
            }
        }
        found
    }
}

/// `GET /containers/json?all=true&filters={"id":[...]}`, the filter URL-encoded: the Docker
/// API's listing of these containers in any state (`all`: a container is listed from its
/// creation, before its process runs).
fn api_query(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("%22{id}%22")).collect();
    format!(
        "/containers/json?all=true&filters=%7B%22id%22%3A%5B{}%5D%7D",
        quoted.join("%2C")
    )
}

/// The containers of the OCI bundles under `root`: `<root>/<id>/userdata/config.json`
/// (`depth` 1, CRI-O) or `<root>/<namespace>/<id>/config.json` (`depth` 2, containerd); only
/// those whose annotations name them.
fn bundles<'a>(
    root: &Path,
    depth: usize,
    known: &'a dyn Fn(&str) -> bool,
) -> impl Iterator<Item = (String, Container)> + 'a {
    let dirs: Vec<PathBuf> = if depth == 2 {
        subdirs(root)
            .flat_map(|ns| subdirs(&ns).collect::<Vec<_>>())
            .collect()
    } else {
        subdirs(root).collect()
    };
    dirs.into_iter().filter_map(move |dir| {
        let name = dir.file_name()?.to_str()?;
        let id = container_id(name)?.to_string();
        if known(&id) {
            return None;
        }
        let config = if depth == 2 {
            dir.join("config.json")
        } else {
            dir.join("userdata/config.json")
        };
        let text = fs::read(config).ok()?;
        let json: Value = serde_json::from_slice(&text).ok()?;
        let c = from_annotations(&id, json.get("annotations")?)?;
        Some((id, c))
    })
}

fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// The kubelet's labels for a container's names.
const K8S_CONTAINER: &str = "io.kubernetes.container.name";
const K8S_POD: &str = "io.kubernetes.pod.name";
const K8S_NAMESPACE: &str = "io.kubernetes.pod.namespace";

/// A container from its OCI bundle's annotations (containerd's CRI plugin, or CRI-O); `None`
/// when they name nothing (podman's bundles, a containerd container not made by Kubernetes).
pub fn from_annotations(id: &str, annotations: &Value) -> Option<Container> {
    let get = |key: &str| annotations.get(key)?.as_str().map(str::to_string);
    // CRI-O also keeps the kubelet's labels as one JSON string.
    let crio_labels: Option<Value> =
        get("io.kubernetes.cri-o.Labels").and_then(|s| serde_json::from_str(&s).ok());
    let label = |key: &str| {
        get(key).or_else(|| crio_labels.as_ref()?.get(key)?.as_str().map(str::to_string))
    };
    let c = Container {
        id: id.to_string(),
        name: get("io.kubernetes.cri.container-name").or_else(|| label(K8S_CONTAINER)),
        pod: get("io.kubernetes.cri.sandbox-name").or_else(|| label(K8S_POD)),
        namespace: get("io.kubernetes.cri.sandbox-namespace").or_else(|| label(K8S_NAMESPACE)),
    };
    (c.name.is_some() || c.pod.is_some()).then_some(c)
}

/// A container from the Docker API's names and labels: the kubelet's labels when it has
/// them, else its name (without Docker's leading `/`).
pub fn from_labels(id: &str, name: Option<&str>, labels: Option<&Value>) -> Container {
    let label = |key: &str| labels?.get(key)?.as_str().map(str::to_string);
    Container {
        id: id.to_string(),
        name: label(K8S_CONTAINER).or_else(|| name.map(|n| n.trim_start_matches('/').to_string())),
        pod: label(K8S_POD),
        namespace: label(K8S_NAMESPACE),
    }
}

/// The containers in a `GET /containers/json` answer (`[{"Id", "Names", "Labels"}, …]`).
pub fn from_api_list(answer: &Value) -> Vec<Container> {
    answer
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let id = c.get("Id")?.as_str()?;
            // Only a full id names the cgroup.
            container_id(id)?;
            let name = c.get("Names").and_then(|n| n.as_array()?.first()?.as_str());
            Some(from_labels(id, name, c.get("Labels")))
        })
        .collect()
}

/// Asks the Docker API on `socket` for the containers `GET path` lists.
async fn api_list(socket: &Path, path: &str) -> Result<Vec<Container>, String> {
    use http_body_util::BodyExt as _;

    let (response, conn) = api_get(socket, path).await?;
    let _conn = AbortOnDrop(conn);
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {path}: {status}"));
    }
    let json: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(from_api_list(&json))
}

/// `GET path` on the Docker API at the unix socket `socket`: the answer's head, with its body
/// to read, and the task that drives the connection (abort it when done: [`AbortOnDrop`]).
/// Shared by the listings and the event streams ([`crate::host::runtime_events`]).
pub async fn api_get(
    socket: &Path,
    path: &str,
) -> Result<
    (
        hyper::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    String,
> {
    use http_body_util::Empty;
    use hyper::body::Bytes;

    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok((response, conn))
}

/// Aborts a task when dropped: the connection of an answer read to its end, or given up.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "1872f01e81a5e66f8fe602936808abd0a650fa4c1eba45c4196e78ef05e32840";
    const ID2: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    fn k8s(name: &str, pod: &str, ns: &str) -> Container {
        Container {
            id: ID.into(),
            name: Some(name.into()),
            pod: Some(pod.into()),
            namespace: Some(ns.into()),
        }
    }

    #[test]
    fn containerd_and_crio_bundles_name_their_pods() {
        // containerd's CRI plugin (annotations of a real bundle, trimmed).
        let containerd = json!({
            "io.kubernetes.cri.container-name": "web",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": ID2,
            "io.kubernetes.cri.sandbox-name": "shop-7f",
            "io.kubernetes.cri.sandbox-namespace": "prod",
        });
        assert_eq!(
            from_annotations(ID, &containerd),
            Some(k8s("web", "shop-7f", "prod"))
        );
        // CRI-O: the kubelet's labels as annotations, or only inside its Labels string.
        let crio = json!({
            "io.kubernetes.container.name": "web",
            "io.kubernetes.pod.name": "shop-7f",
            "io.kubernetes.pod.namespace": "prod",
            "io.kubernetes.cri-o.ContainerType": "container",
        });
        assert_eq!(
            from_annotations(ID, &crio),
            Some(k8s("web", "shop-7f", "prod"))
        );
        let crio_labels = json!({
            "io.kubernetes.cri-o.Labels": r#"{"io.kubernetes.container.name":"web","io.kubernetes.pod.name":"shop-7f","io.kubernetes.pod.namespace":"prod"}"#,
        });
        assert_eq!(
            from_annotations(ID, &crio_labels),
            Some(k8s("web", "shop-7f", "prod"))
        );
        // podman's bundle (this machine's, with labels set): no names in it.
        let podman = json!({
            "io.container.manager": "libpod",
            "io.kubernetes.cri-o.Created": "2026-12-02T17:18:15.251534144Z",
            "io.kubernetes.cri-o.TTY": "false",
            "org.opencontainers.image.stopSignal": "15",
        });
        assert_eq!(from_annotations(ID, &podman), None);
    }

    #[test]
    fn the_docker_api_names_plain_and_kubernetes_containers() {
        let answer = json!([
            {"Id": ID, "Names": ["/shop-web"], "Labels": {
                "io.kubernetes.container.name": "web",
                "io.kubernetes.pod.name": "shop-7f",
                "io.kubernetes.pod.namespace": "prod"}},
            {"Id": ID2, "Names": ["/redis"], "Labels": {"maintainer": "x"}},
            {"Id": "short", "Names": ["/odd"]},
            {"Names": ["/no-id"]},
        ]);
        let list = from_api_list(&answer);
        assert_eq!(
            list,
            [
                k8s("web", "shop-7f", "prod"),
                Container {
                    id: ID2.into(),
                    name: Some("redis".into()),
                    pod: None,
                    namespace: None
                }
            ]
        );
        assert!(from_api_list(&json!({"message": "page not found"})).is_empty());
        assert_eq!(from_labels(ID, None, None), Container::unnamed(ID));
    }

    #[test]
    fn bundles_on_disk_are_found_and_known_ones_not_read_again() {
        let scratch = crate::host::scratch::Scratch::new("runtime-bundles");
        let containerd = scratch.path("containerd");
        let bundle = containerd.join("k8s.io").join(ID);
        fs::create_dir_all(&bundle).unwrap();
        let config = json!({"ociVersion": "1.1.0", "annotations": {
            "io.kubernetes.cri.container-name": "web",
            "io.kubernetes.cri.sandbox-name": "shop-7f",
            "io.kubernetes.cri.sandbox-namespace": "prod"}});
        fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let crio = scratch.path("crio");
        fs::create_dir_all(crio.join(ID2).join("userdata")).unwrap();
        let config = json!({"annotations": {
            "io.kubernetes.container.name": "db",
            "io.kubernetes.pod.name": "pg-0",
            "io.kubernetes.pod.namespace": "data"}});
        fs::write(
            crio.join(ID2).join("userdata/config.json"),
            config.to_string(),
        )
        .unwrap();
        // Not containers: a directory that is no id, a bundle without config.
        fs::create_dir_all(crio.join("containers.lock.d")).unwrap();
        fs::create_dir_all(containerd.join("moby").join("f".repeat(64))).unwrap();
        let sources = Sources {
            containerd_tasks: containerd,
            crio_containers: crio,
            api_sockets: vec![scratch.path("no.sock")],
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let found = rt.block_on(sources.list(&|_| false));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[ID], k8s("web", "shop-7f", "prod"));
        assert_eq!(found[ID2].pod.as_deref(), Some("pg-0"));
        let found = rt.block_on(sources.list(&|id| id == ID));
        assert_eq!(found.keys().collect::<Vec<_>>(), [ID2]);
        let found = rt.block_on(sources.lookup(&[ID.to_string()]));
        assert_eq!(found.keys().collect::<Vec<_>>(), [ID]);
    }

    #[test]
    fn the_docker_api_is_asked_over_its_unix_socket() {
        // A fake runtime: answers one request in chunks, as podman does.
        let scratch = crate::host::scratch::Scratch::new("runtime-api");
        let socket = scratch.path("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead as _, BufReader, Write as _};
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let body = json!([{"Id": ID, "Names": ["/nw"], "Labels": {
                "io.kubernetes.pod.name": "shop-7f"}}])
            .to_string();
            let (a, b) = body.split_at(10);
            write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
            .unwrap();
            request
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sources = Sources {
            containerd_tasks: scratch.path("no-containerd"),
            crio_containers: scratch.path("no-crio"),
            api_sockets: vec![socket],
        };
        let found = rt.block_on(sources.lookup(&[ID.to_string()]));
        // The filter is `{"id":["<ID>"]}`, URL-encoded.
        assert_eq!(
            server.join().unwrap(),
            format!(
                "GET /containers/json?all=true&filters=%7B%22id%22%3A%5B%22{ID}%22%5D%7D HTTP/1.1\r\n"
            )
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[ID].name.as_deref(), Some("nw"));
        assert_eq!(found[ID].pod.as_deref(), Some("shop-7f"));
        let err = rt
            .block_on(api_list(&scratch.path("none.sock"), "/containers/json"))
            .unwrap_err();
        assert!(err.starts_with("connect: "), "{err}");
    }
}
