//! The runtimes' event streams: a container's names from its creation, and word of its removal.
//!
//! Why: [`crate::host::containers`] asks the runtimes about a container when its first socket
//! event names it. A container that exits and is removed before the runtime answers
//! (`podman run --rm` of a quick command, a short job) is in no listing by then, and would keep
//! its id only. The Docker API's `GET /events` (Docker's, and podman's compatible API) says
//! `create`, with the container's id, name and labels (the kubelet's among them), before the
//! container's process runs, and `destroy` (Docker) or `remove` (podman) once it is removed;
//! podman replays what it logged, so these can come after the container is gone, but they
//! come. One long-lived request per API socket that exists when a run starts: nothing is sent
//! while nothing happens, and a host with no such socket has no stream at all.
//!
//! A stream that breaks is opened again after a pause that doubles up to [`MAX_RETRY`], asking
//! for the events since it broke (`since`), so that a runtime restart loses none. containerd
//! and CRI-O serve no Docker API: their containers are named by the question (their bundles on
//! disk), which also stays the fallback for a runtime whose stream is down.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc::sync_channel},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{
    host::{
        container_id::container_id,
        runtime::{AbortOnDrop, api_get, from_labels},
    },
    model::names::Container,
};

/// What a stream tells.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// A container was created: its names.
    Created(Container),
    /// A container was removed: its id.
    Removed(String),
    /// A stream started (`true`) or ended (`false`).
    Streaming(bool),
}

/// Who hears the updates (called on the streams' thread).
pub type Listener = Arc<dyn Fn(Update) + Send + Sync>;

/// `GET /events` for containers' `create`, `destroy` (Docker) and `remove` (podman) only:
/// the filter `{"type":["container"],"event":["create","destroy","remove"]}`, URL-encoded.
const EVENTS_PATH: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22create%22%2C%22destroy%22%2C%22remove%22%5D%7D";

/// How long connecting and the answer's head may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before a broken stream is opened again, doubled after each failure up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// The most of one event kept while it arrives; a stream that sends more without a whole JSON
/// value is not an event stream, and is opened again.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Follows the event streams of the `sockets` that exist now, on a thread of its own, and
/// waits up to `settle` for each to have started (or failed) once: a container created as the
/// run starts is then named by its `create`. Whether a stream is followed.
pub fn follow(sockets: &[PathBuf], listener: Listener, settle: Duration) -> bool {
    let sockets: Vec<PathBuf> = sockets.iter().filter(|s| s.exists()).cloned().collect();
    if sockets.is_empty() {
        return false;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::warn!("container events: no runtime to follow them on ({e})");
            return false;
        }
    };
    let (started, starts) = sync_channel(sockets.len());
    let count = sockets.len();
    let spawned = std::thread::Builder::new()
        .name("netwatch-runtime-events".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut streams = tokio::task::JoinSet::new();
                for socket in sockets {
                    let (listener, started) = (listener.clone(), started.clone());
                    streams.spawn(async move {
                        follow_one(&socket, &*listener, move || {
                            let _ = started.try_send(());
                        })
                        .await
                    });
                }
                while streams.join_next().await.is_some() {}
            })
        });
    if let Err(e) = spawned {
        log::warn!("container events: cannot start the thread that follows them: {e}");
        return false;
    }
    let deadline = Instant::now() + settle;
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        if starts.recv_timeout(left).is_err() {
            break;
        }
    }
    true
}

/// Follows `socket`'s event stream for good: opens it again whenever it breaks. `started` is
/// called once, after the first attempt connected or failed.
async fn follow_one(
    socket: &Path,
    listener: &(dyn Fn(Update) + Send + Sync),
    started: impl FnOnce() + Send,
) {
    let mut started = Some(started);
    let mut pause = FIRST_RETRY;
    let mut since: Option<u64> = None;
    loop {
        let mut connected = false;
        let result = stream(socket, since, &mut |u| {
            if u == Update::Streaming(true) {
                connected = true;
                if let Some(started) = started.take() {
                    started();
                }
            }
            listener(u);
        })
        .await;
        if connected {
            listener(Update::Streaming(false));
            pause = FIRST_RETRY;
        }
        if let Some(started) = started.take() {
            started();
        }
        match result {
            Ok(()) => log::debug!("{}: the event stream ended", socket.display()),
            Err(e) => log::debug!("{}: event stream: {e}", socket.display()),
        }
        // What happened from a second before the break on is asked for again: a repeated
        // `create` names a container the same way twice.
        if connected || since.is_none() {
            since = Some(unix_seconds().saturating_sub(1));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One `GET /events` on `socket` (from `since`, when given), until it ends: tells `heard`
/// [`Update::Streaming`] once the runtime accepted it, then every update it carries.
async fn stream(
    socket: &Path,
    since: Option<u64>,
    heard: &mut (dyn FnMut(Update) + Send),
) -> Result<(), String> {
    use http_body_util::BodyExt as _;

    let path = match since {
        Some(t) => format!("{EVENTS_PATH}&since={t}"),
        None => EVENTS_PATH.to_string(),
    };
    let opened = api_get(socket, &path);
    let (response, conn) = tokio::time::timeout(CONNECT_TIMEOUT, opened)
        .await
        .map_err(|_| format!("no answer in {CONNECT_TIMEOUT:?}"))??;
    // The connection's task ends with this function, however it returns.
    let _conn = AbortOnDrop(conn);
    if !response.status().is_success() {
        return Err(format!("GET {path}: {}", response.status()));
    }
    heard(Update::Streaming(true));
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the stream: {e}"))?;
        if let Ok(data) = frame.into_data() {
            pending.extend_from_slice(&data);
            take_updates(&mut pending, heard);
            if pending.len() > MAX_PENDING_BYTES {
                return Err(format!(
                    "{} bytes without a whole event: not an event stream",
                    pending.len()
                ));
            }
        }
    }
    Ok(())
}

/// Hands `heard` the updates of the whole JSON values at the start of `pending` (a stream's
/// values follow each other, one per line or not), and keeps only the rest.
fn take_updates(pending: &mut Vec<u8>, heard: &mut dyn FnMut(Update)) {
    let mut values = serde_json::Deserializer::from_slice(pending).into_iter::<Value>();
    let mut used = 0;
    loop {
        match values.next() {
            Some(Ok(event)) => {
                used = values.byte_offset();
                if let Some(u) = update_of(&event) {
                    heard(u);
                }
            }
            // The rest of a value still arriving.
            Some(Err(e)) if e.is_eof() => break,
            // Not JSON: dropped, the stream goes on with what comes next.
            Some(Err(_)) => {
                used = pending.len();
                break;
            }
            None => {
                used = pending.len();
                break;
            }
        }
    }
    pending.drain(..used);
}

/// The update one event says: a container's `create` (`Actor.Attributes` holds its `name`,
/// `image` and labels) or its removal; `None` for anything else.
pub fn update_of(event: &Value) -> Option<Update> {
    if event.get("Type")?.as_str()? != "container" {
        return None;
    }
    let actor = event.get("Actor")?;
    let id = container_id(actor.get("ID")?.as_str()?)?;
    match event.get("Action")?.as_str()? {
        "create" => {
            let attributes = actor.get("Attributes");
            let name = attributes.and_then(|a| a.get("name")?.as_str());
            Some(Update::Created(from_labels(id, name, attributes)))
        }
        "destroy" | "remove" => Some(Update::Removed(id.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    const ID: &str = "d784876931860335e6c06ef1738845099e5b4567cc7642c35a1adee84840d98f";

    /// podman 4.3.1's `create`, as its compatible API sends it.
    fn podman_create() -> Value {
        json!({"status": "create", "id": ID, "Type": "container", "Action": "create",
            "Actor": {"ID": ID, "Attributes": {
                "containerExitCode": "0", "image": "",
                "io.kubernetes.container.name": "c1",
                "io.kubernetes.pod.name": "p1",
                "io.kubernetes.pod.namespace": "ns1",
                "name": "quick", "podId": ""}},
            "scope": "local", "time": 1796302525, "timeNano": 1796302525085835457u64})
    }

    #[test]
    fn creations_and_removals_are_read_and_the_rest_passed_over() {
        assert_eq!(
            update_of(&podman_create()),
            Some(Update::Created(Container {
                id: ID.into(),
                name: Some("c1".into()),
                pod: Some("p1".into()),
                namespace: Some("ns1".into()),
            }))
        );
        // Docker: a plain container, its name only; `destroy` when removed.
        let docker = json!({"Type": "container", "Action": "create",
            "Actor": {"ID": ID, "Attributes": {"image": "redis", "name": "cache"}}});
        let Some(Update::Created(c)) = update_of(&docker) else {
            panic!("{docker}")
        };
        assert_eq!((c.name.as_deref(), c.pod), (Some("cache"), None));
        for action in ["destroy", "remove"] {
            let gone = json!({"Type": "container", "Action": action, "Actor": {"ID": ID}});
            assert_eq!(update_of(&gone), Some(Update::Removed(ID.into())));
        }
        for other in [
            json!({"Type": "container", "Action": "start", "Actor": {"ID": ID}}),
            json!({"Type": "image", "Action": "create", "Actor": {"ID": ID}}),
            json!({"Type": "container", "Action": "create", "Actor": {"ID": "abc"}}),
        ] {
            assert_eq!(update_of(&other), None, "{other}");
        }
    }

    #[test]
    fn values_split_across_chunks_are_read_whole() {
        let text = format!("{}\n{}", podman_create(), podman_create());
        let (a, b) = text.split_at(text.len() - 7);
        let mut heard = Vec::new();
        let mut pending = a.as_bytes().to_vec();
        take_updates(&mut pending, &mut |u| heard.push(u));
        assert_eq!(heard.len(), 1, "the first value only");
        assert!(!pending.is_empty(), "the second one's start is kept");
        pending.extend_from_slice(b.as_bytes());
        take_updates(&mut pending, &mut |u| heard.push(u));
        assert_eq!(heard.len(), 2);
        assert!(pending.is_empty());
        pending.extend_from_slice(b"<html>");
        take_updates(&mut pending, &mut |u| heard.push(u));
        assert!(pending.is_empty(), "what is not JSON is dropped");
    }

    #[test]
    fn a_stream_is_followed_and_opened_again_when_it_breaks() {
        // A fake runtime: the first request gets one `create` and the stream ends; the second
        // one (which must ask for the events since the break) gets a removal.
        let scratch = crate::host::scratch::Scratch::new("runtime-events");
        let socket = scratch.path("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead as _, BufReader, Write as _};
            let mut requests = Vec::new();
            for body in [
                format!("{}\n", podman_create()),
                format!(
                    "{}\n",
                    json!({"Type": "container", "Action": "remove", "Actor": {"ID": ID}})
                ),
            ] {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                requests.push(request);
                write!(
                    &stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .unwrap();
            }
            requests
        });
        let heard = Arc::new(Mutex::new(Vec::new()));
        let into = heard.clone();
        let followed = follow(
            &[scratch.path("absent.sock"), socket],
            Arc::new(move |u| into.lock().unwrap().push(u)),
            Duration::from_secs(5),
        );
        assert!(followed);
        let requests = server.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while heard.lock().unwrap().len() < 6 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let heard = heard.lock().unwrap();
        assert!(
            matches!(
                &heard[..],
                [
                    Update::Streaming(true),
                    Update::Created(c),
                    Update::Streaming(false),
                    Update::Streaming(true),
                    Update::Removed(id),
                    Update::Streaming(false),
                    ..
                ] if c.pod.as_deref() == Some("p1") && id == ID
            ),
            "{heard:?}"
        );
        assert!(
            requests[0].starts_with(&format!("GET {EVENTS_PATH} ")),
            "{}",
            requests[0]
        );
        assert!(
            requests[1].starts_with(&format!("GET {EVENTS_PATH}&since=")),
            "{}",
            requests[1]
        );
        assert!(!follow(
            &[scratch.path("absent.sock")],
            Arc::new(|_| {}),
            Duration::ZERO
        ));
    }
}
