//! Dropping values that own a tokio runtime off async threads (the growing
//! segment shuts its own runtime down in the background instead).
//!
//! DiskANN's disk searcher owns a runtime (and so does our growing
//! segment), and dropping a runtime blocks: on an async thread that is a
//! panic ("Cannot drop a runtime in a context where blocking is not
//! allowed"). The last owner of a segment can be anywhere, for instance a
//! task still holding a shard copy that a transfer has just replaced (the
//! chaos run found a worker whose agent task died this way), so the value
//! is handed to a thread of its own when it is dropped inside a runtime.

pub(crate) struct DropOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropOffRuntime<T> {
    pub(crate) fn new(value: T) -> Self {
        DropOffRuntime(Some(value))
    }
}

impl<T: Send + 'static> std::ops::Deref for DropOffRuntime<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let spawned = std::thread::Builder::new()
                .name("engram-drop".into())
                .spawn(move || drop(value));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a thread to drop a segment's searcher");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the chaos run hit: the last handle to a runtime-owning value
    /// dropped inside an async task.
    #[test]
    fn a_runtime_dropped_inside_an_async_task_does_not_panic() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inner = DropOffRuntime::new(
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        outer.block_on(async move { drop(inner) });
    }
}
