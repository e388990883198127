//! The container id in a cgroup path.
//!
//! Why: the kernel tells which cgroup a socket's owner was in; every container runtime puts a
//! container's processes in a cgroup named after the container's id, each in its own way.
//! The layouts recognized (cgroup v2 paths, and the same paths in a cgroup v1 hierarchy):
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | containerd (Kubernetes) | `/kubepods.slice/…/cri-containerd-<id>.scope` | `/kubepods/burstable/pod<uid>/<id>` |
//! | CRI-O | `/kubepods.slice/…/crio-<id>.scope` | `/kubepods/burstable/pod<uid>/crio-<id>` |
//! | Docker | `/system.slice/docker-<id>.scope` | `/docker/<id>` |
//! | podman | `/machine.slice/libpod-<id>.scope` (also `…/container` below it) | `/libpod_parent/libpod-<id>` |
//!
//! The runtimes' monitor processes (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not the
//! container and name none.

/// Prefixes runtimes put before the id in a cgroup's name.
const PREFIXES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

/// The container id (64 lowercase hex digits) a cgroup path names, from its deepest component
/// that names one; `None` for a path of no container (`/`, `/system.slice/ssh.service`).
/// Accepts a `/proc/<pid>/cgroup` line's path part of any hierarchy.
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(id_of_component)
}

/// The id one path component names: `<prefix><id>[.scope]`, or a bare id.
fn id_of_component(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    is_id(id).then_some(id)
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1872f01e81a5e66f8fe602936808abd0a650fa4c1eba45c4196e78ef05e32840";
    const UID: &str = "3c6a1b2e_8f0d_4c4e_9a57_6a1f0b0d9e21";
    const UID_DASHED: &str = "3c6a1b2e-8f0d-4c4e-9a57-6a1f0b0d9e21";

    /// Every layout, as the cgroup v2 path netwatch names owners by, and as a cgroup v1
    /// hierarchy's line of `/proc/<pid>/cgroup` holds it (the path after the second colon).
    #[test]
    fn every_runtime_and_driver_layout_names_its_container() {
        let layouts = [
            // containerd, systemd driver (v2 and v1 name cgroups alike).
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{ID}.scope"),
            // containerd, cgroupfs driver.
            format!("/kubepods/burstable/pod{UID_DASHED}/{ID}"),
            format!("/kubepods/pod{UID_DASHED}/{ID}"),
            // CRI-O, systemd driver and cgroupfs driver.
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID}.slice/crio-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod{UID_DASHED}/crio-{ID}"),
            // Docker, systemd driver and cgroupfs driver; under Kubernetes too.
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-pod{UID}.slice/docker-{ID}.scope"),
            format!("/kubepods/besteffort/pod{UID_DASHED}/{ID}"),
            // podman: systemd driver (root and rootless), the cgroup it makes inside the
            // container's with a cgroup namespace, and the cgroupfs driver (this project's
            // test machines: the same path in every hierarchy).
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
        ];
        for path in &layouts {
            assert_eq!(container_id(path), Some(ID), "v2: {path}");
            for hierarchy in ["memory", "cpu,cpuacct", "name=systemd"] {
                let line = format!("4:{hierarchy}:{path}");
                let v1_path = line.splitn(3, ':').nth(2).unwrap();
                assert_eq!(container_id(v1_path), Some(ID), "v1: {line}");
            }
        }
    }

    #[test]
    fn paths_of_no_container_name_none() {
        for path in [
            "/".to_string(),
            "".to_string(),
            "/system.slice/ssh.service".to_string(),
            "/user.slice/user-0.slice/session-3.scope".to_string(),
            "/process_api/af7c71b74d7efa5a7a463329dfdd6506".to_string(),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice"),
            format!("/kubepods/burstable/pod{UID_DASHED}"),
            // The runtimes' monitors: not the container.
            format!("/kubepods.slice/kubepods-pod{UID}.slice/crio-conmon-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            // Near misses: upper case, one digit short or long, another prefix.
            format!("/docker/{}", ID.to_uppercase()),
            format!("/docker/{}", &ID[1..]),
            format!("/docker/{ID}0"),
            format!("/system.slice/runc-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path), None, "{path}");
        }
    }
}
