//! A loaded BPF object as steps keep it in their context: data only, below
//! both the context and the `bpf_*` steps that load and run it.

use std::sync::Arc;

use libbpf_sys as bpf;

/// An open, loaded libbpf object; closed when the last user drops it.
pub struct ObjectHandle(pub(super) *mut bpf::bpf_object);

// SAFETY: a libbpf object is heap memory plus fds, with no thread
// affinity, so it may be used and closed (once, in Drop) on any thread.
unsafe impl Send for ObjectHandle {}
// SAFETY: shared references only read the object (program lookups and fds);
// it is mutated (reuse_fd, load) only in `load`, while its one Arc is local.
unsafe impl Sync for ObjectHandle {}

impl Drop for ObjectHandle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from bpf_object__open_file and is closed once.
        unsafe { bpf::bpf_object__close(self.0) };
    }
}

/// A loaded BPF object and the arena its programs use.
#[derive(Clone)]
pub struct LoadedObject {
    pub(super) handle: Arc<ObjectHandle>,
    /// The object file, e.g. `arena_ops.bpf.o` (its programs' arguments are
    /// bounds-checked when the lab knows them).
    pub(super) object: String,
    /// Arena id of the object's arena map, if registered or reused.
    pub(super) arena: Option<String>,
}
