//! What the model cannot know by itself but reports: the owner's cgroup path. The host (or a
//! recording) knows it; the model asks through [`OwnerNames`], which tests fake.

/// Names of socket owners, looked up when a report or a line is made.
pub trait OwnerNames {
    /// The owner's cgroup path, by cgroup v2 id, else by pid; `None` when unknown.
    fn cgroup(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String>;
}

/// A closure is a resolver too (tests give a fixed table this way).
impl<F: Fn(Option<u64>, Option<u32>) -> Option<String>> OwnerNames for F {
    fn cgroup(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> Option<String> {
        self(cgroup_id, pid)
    }
}
