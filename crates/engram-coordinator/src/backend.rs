//! Where collections live: in this process (the embedded node: a catalog
//! file and a local worker) or on cluster workers behind the Raft shard map.
//! The service sees both through [`ShardedCollection`].

use parking_lot::Mutex;
use std::sync::Arc;

use engram_worker::{HostedCollection, ShardedCollection, Worker};

use crate::catalog::Catalog;
use crate::cluster::ClusterBackend;
use crate::error::Result;

pub(crate) type Collection = Arc<dyn ShardedCollection>;

pub(crate) enum Backend {
    Embedded {
        catalog: Mutex<Catalog>,
        /// Boxed: the embedded variant is much larger than the cluster's.
        worker: Box<Worker>,
    },
    Cluster(ClusterBackend),
}

impl Backend {
    pub(crate) fn collection(&self, name: &str) -> Result<Collection> {
        match self {
            Backend::Embedded { worker, .. } => Ok(worker.get(name)?),
            Backend::Cluster(cluster) => Ok(cluster.collection(name)?),
        }
    }

    /// The local collection, for embedded-only maintenance.
    pub(crate) fn hosted(&self, name: &str) -> Option<Arc<HostedCollection>> {
        match self {
            Backend::Embedded { worker, .. } => worker.get(name).ok(),
            Backend::Cluster(_) => None,
        }
    }

    pub(crate) fn names(&self) -> Vec<String> {
        match self {
            Backend::Embedded { catalog, .. } => {
                catalog.lock().specs().map(|s| s.name.clone()).collect()
            }
            Backend::Cluster(cluster) => cluster.names(),
        }
    }

    pub(crate) fn cluster(&self) -> Option<&ClusterBackend> {
        match self {
            Backend::Cluster(c) => Some(c),
            Backend::Embedded { .. } => None,
        }
    }
}
