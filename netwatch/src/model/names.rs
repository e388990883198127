//! What the model cannot know by itself but reports: the owner's cgroup path and the container
//! it runs in. The host (or a recording) knows them; the model asks through [`OwnerNames`],
//! which tests fake.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Names of socket owners, looked up when a report or a line is made.
pub trait OwnerNames {
    /// The owner's cgroup path, by cgroup v2 id, else by pid; `None` when unknown.
    fn cgroup(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String>;

    /// The container the owner runs in; `None` when it runs in none, or it is unknown.
    fn container(&self, _cgroup_id: Option<u64>, _pid: Option<u32>) -> Option<Arc<Container>> {
        None
    }
}

/// A closure is a resolver too (tests give a fixed table this way).
impl<F: Fn(Option<u64>, Option<u32>) -> Option<String>> OwnerNames for F {
    fn cgroup(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String> {
        self(cgroup_id, pid)
    }
}

/// Who a container is, for people: its id comes from the owner's cgroup path, the rest from
/// the container runtime (Kubernetes' kubelet labels for `pod` and `namespace`). Serialized
/// as the `container_id`, `container`, `pod` and `namespace` fields of JSON lines and
/// recordings, each absent when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's container id (64 hex digits).
    #[serde(rename = "container_id")]
    pub id: String,
    /// The container's name: Kubernetes' container name (`io.kubernetes.container.name`) in a
    /// pod, else the runtime's name for it.
    #[serde(rename = "container", skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// Kubernetes pod name (`io.kubernetes.pod.name`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
    /// Kubernetes namespace (`io.kubernetes.pod.namespace`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
}

impl Container {
    /// A container known by its id only (the runtime has not answered, or knows nothing).
    pub fn unnamed(id: &str) -> Container {
        Container {
            id: id.to_string(),
            ..Container::default()
        }
    }

    /// How a column shows it: `namespace/pod/container` for a pod's container, the
    /// container's name for a plain one, its id's first 12 digits when nothing else is known.
    pub fn label(&self) -> String {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| self.id.chars().take(12).collect());
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}/{name}"),
            (None, Some(pod)) => format!("{pod}/{name}"),
            _ => name,
        }
    }
}

/// What a JSON line (a recording) says about its event's owner, beside the event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedOwner {
    /// The owner's cgroup path.
    pub cgroup: Option<String>,
    /// The owner's container.
    pub container: Option<Container>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_reads_as_namespace_pod_container_or_less() {
        let id = "a".repeat(64);
        let mut c = Container::unnamed(&id);
        assert_eq!(c.label(), "aaaaaaaaaaaa");
        c.name = Some("web".into());
        assert_eq!(c.label(), "web");
        c.pod = Some("shop-7f".into());
        assert_eq!(c.label(), "shop-7f/web");
        c.namespace = Some("prod".into());
        assert_eq!(c.label(), "prod/shop-7f/web");
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["container_id"], id.as_str());
        assert_eq!(json["container"], "web");
        assert_eq!(
            (json["pod"].as_str(), json["namespace"].as_str()),
            (Some("shop-7f"), Some("prod"))
        );
        let bare = serde_json::to_value(Container::unnamed(&id)).unwrap();
        assert_eq!(bare.as_object().unwrap().len(), 1, "{bare}");
    }
}
