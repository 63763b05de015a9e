//! The one choice of what runs sessions, as data: a leaf, so that the
//! request's validation (which only asks "are there containers?") can
//! name it without depending on the backends themselves.

use std::path::PathBuf;

/// What runs sessions: the one choice, made once per server (`--backend`,
/// `--host-exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// Commands run on this host as execd's children (a sidecar); there
    /// are no containers.
    Host,
    /// A runtime CLI child per session: `<program> exec` (docker, podman,
    /// nerdctl).
    Cli { program: String },
    /// The Docker Engine API on this unix socket.
    EngineApi { socket: PathBuf },
    /// The OCI runtime `runtime` (`runc`, `crun`; a name on `PATH` or a
    /// path) with its container state under `root`: Docker's is
    /// `oci::DOCKER_ROOT` (`/run/docker/runtime-runc/moby`), containerd's
    /// Kubernetes namespace `oci::CONTAINERD_K8S_ROOT`
    /// (`/run/containerd/runc/k8s.io`). Container names, questions about
    /// containers and attaches go to the engine the runtime CLI `cli`
    /// reaches, as with `BackendConfig::Cli`.
    Oci {
        runtime: String,
        root: PathBuf,
        cli: String,
    },
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Cli {
            program: "docker".into(),
        }
    }
}

impl BackendConfig {
    /// Whether sessions run in containers (every backend but the host's).
    pub fn has_containers(&self) -> bool {
        !matches!(self, BackendConfig::Host)
    }
}
