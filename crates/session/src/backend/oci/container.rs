//! Finding the container a session names: the engine turns a name or short
//! id into the full id (one inspect, cached briefly), along with what the
//! exec's spec needs from the engine's configuration; the runtime's state
//! and the bundle's `config.json` supply the rest.
//!
//! The engine is asked through the backend that speaks to it (the OCI
//! backend's inner CLI backend: the local API socket when the runtime CLI
//! is a plain local docker, else the CLI). A container the engine does
//! not know may still be one of the runtime's own (containerd's Kubernetes
//! namespace, addressed by full id): then its state directory under the
//! runtime root is used directly.
//!
//! Only the identity is cached, never the state: whether the container
//! runs, and its init's pid, come from the runtime for every start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::inspect::{ContainerDocument, PreflightError, QueryError};
use crate::backend::Backend;
use crate::command::is_container_ref;

/// How long a name keeps resolving to the id the engine gave for it.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// Most names cached.
const CACHE_CAP: usize = 512;
/// A hung engine fails the start instead of holding it.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest bundle `config.json` read.
const MAX_CONFIG: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Engine(#[from] PreflightError),
    #[error("reading the container's bundle {path}: {source}")]
    Bundle {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the container's bundle config is not valid JSON: {0}")]
    BadConfig(String),
}

/// A container as the engine named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The full id: the runtime's container id.
    pub id: String,
    /// Whether the engine's configured environment names `TERM`
    /// (`None`: no engine said).
    pub configured_term: Option<bool>,
    /// The container's `--group-add`.
    pub group_add: Vec<String>,
}

/// What the bundle says, as far as an exec needs it.
pub struct Bundle {
    /// The container's `process`.
    pub process: Value,
    /// Its cgroups are systemd's (`cgroupsPath` is `slice:prefix:name`).
    pub systemd: bool,
}

/// Resolves names through the engine, remembering them a moment.
pub struct Resolver {
    /// The backend that speaks to the engine naming the containers.
    engine: Arc<dyn Backend>,
    cache: Mutex<HashMap<String, (Instant, Target)>>,
}

impl Resolver {
    pub fn new(engine: Arc<dyn Backend>) -> Resolver {
        Resolver {
            engine,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, name: &str) -> Option<Target> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(name)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, t)| t.clone())
    }

    fn remember(&self, name: &str, target: &Target) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAP {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(name.to_string(), (Instant::now(), target.clone()));
    }

    /// Forgets `name` (its id turned out stale: the name was re-used).
    pub fn forget(&self, name: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(name);
    }

    /// The container `name` (validated) names.
    pub async fn resolve(&self, root: &Path, name: &str) -> Result<Target, ContainerError> {
        if let Some(target) = self.cached(name) {
            return Ok(target);
        }
        let asked = inspect(self.engine.as_ref(), name).await;
        let target = match asked {
            Ok(target) => target,
            // Not the engine's: maybe the runtime's own, by full id.
            Err(
                e @ (PreflightError::NotFound { .. }
                | PreflightError::EngineUnavailable { .. }
                | PreflightError::CliNotFound { .. }),
            ) => {
                if !root.join(name).is_dir() {
                    return Err(e.into());
                }
                Target {
                    id: name.to_string(),
                    configured_term: None,
                    group_add: Vec::new(),
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.remember(name, &target);
        Ok(target)
    }
}

/// The engine's inspect of `name`, as a start's verdict.
async fn inspect(engine: &dyn Backend, name: &str) -> Result<Target, PreflightError> {
    let unavailable = |message: String| PreflightError::EngineUnavailable { message };
    let asked = tokio::time::timeout(INSPECT_TIMEOUT, engine.inspect(name))
        .await
        .map_err(|_| unavailable("the engine did not answer an inspect".into()))?;
    match asked {
        Ok(ContainerDocument::Found(body)) => parse_inspect(name, &body),
        Ok(ContainerDocument::Missing(message)) => Err(PreflightError::NotFound {
            message: if message.starts_with("Error") {
                message.to_string()
            } else {
                format!("Error response from daemon: {message}")
            },
        }),
        Err(QueryError::Cli { program, source })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            Err(PreflightError::CliNotFound { program })
        }
        Err(e @ QueryError::NoContainers) => Err(PreflightError::Failed {
            container_id: name.to_string(),
            message: e.to_string(),
        }),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

/// The parts of an inspect (an object, or the CLI's one-element array)
/// a start needs.
fn parse_inspect(name: &str, body: &str) -> Result<Target, PreflightError> {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let json = match &json {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    let failed = |message: &str| PreflightError::Failed {
        container_id: name.to_string(),
        message: message.to_string(),
    };
    let id = json["Id"].as_str().unwrap_or_default();
    // The id becomes a path component and a runtime argument.
    if !is_container_ref(id) {
        return Err(failed("the engine's inspect has no usable Id"));
    }
    let state = &json["State"];
    let status = state["Status"].as_str().unwrap_or_default();
    if status != "running" {
        return Err(PreflightError::NotRunning {
            container_id: name.to_string(),
            state: if status.is_empty() {
                "unknown".into()
            } else {
                status.to_string()
            },
        });
    }
    let configured_term = json["Config"]["Env"].as_array().map(|env| {
        env.iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM=")))
    });
    let group_add = json["HostConfig"]["GroupAdd"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Target {
        id: id.to_string(),
        configured_term: Some(configured_term.unwrap_or(false)),
        group_add,
    })
}

/// Reads the bundle's `config.json`. Blocking.
pub fn read_bundle(bundle: &Path) -> Result<Bundle, ContainerError> {
    use std::io::Read;
    let path = bundle.join("config.json");
    let bundle_err = |source| ContainerError::Bundle {
        path: path.display().to_string(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .map_err(bundle_err)?
        .take(MAX_CONFIG)
        .read_to_end(&mut text)
        .map_err(bundle_err)?;
    let config: Value =
        serde_json::from_slice(&text).map_err(|e| ContainerError::BadConfig(e.to_string()))?;
    let systemd = config["linux"]["cgroupsPath"]
        .as_str()
        .is_some_and(is_systemd_path);
    Ok(Bundle {
        process: config["process"].clone(),
        systemd,
    })
}

/// `slice:prefix:name`, as runc's `--systemd-cgroup` expects.
fn is_systemd_path(path: &str) -> bool {
    !path.starts_with('/') && path.split(':').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9d7ef7ba5de134c789193a8e07b8a7763f44c47777fabbed57a726b1b9accfa5";

    #[test]
    fn inspects_give_the_id_and_the_exec_hints() {
        let body = format!(
            r#"[{{"Id":"{ID}","State":{{"Status":"running","Pid":5}},
               "Config":{{"Env":["PATH=/bin","TERM=vt220"]}},
               "HostConfig":{{"GroupAdd":["audio","44"]}}}}]"#
        );
        let t = parse_inspect("web", &body).unwrap();
        assert_eq!(t.id, ID);
        assert_eq!(t.configured_term, Some(true));
        assert_eq!(t.group_add, vec!["audio".to_string(), "44".to_string()]);
        let body = format!(r#"{{"Id":"{ID}","State":{{"Status":"running"}},"Config":{{}}}}"#);
        let t = parse_inspect("web", &body).unwrap();
        assert_eq!((t.configured_term, t.group_add.len()), (Some(false), 0));
        let body = format!(r#"{{"Id":"{ID}","State":{{"Status":"paused"}}}}"#);
        assert!(matches!(
            parse_inspect("web", &body),
            Err(PreflightError::NotRunning { state, .. }) if state == "paused"
        ));
        let body = r#"{"Id":"../../etc","State":{"Status":"running"}}"#;
        assert!(matches!(
            parse_inspect("web", body),
            Err(PreflightError::Failed { .. })
        ));
    }

    #[test]
    fn systemd_paths_are_told_apart() {
        assert!(is_systemd_path("system.slice:docker:abc"));
        assert!(!is_systemd_path("/docker/abc"));
        assert!(!is_systemd_path("/a:b:c"));
    }

    /// Names go to the engine through the backend it was given; the
    /// engine's "no such container" falls back to the runtime root.
    #[tokio::test]
    async fn names_resolve_through_the_engine_backend() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("cli");
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\ncase \"$3\" in\n\
                 web) echo '[{{\"Id\":\"{ID}\",\"State\":{{\"Status\":\"running\"}}}}]';;\n\
                 *) echo \"Error: No such container: $3\" >&2; exit 1;;\n\
                 esac\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let engine = crate::backend::cli::CliBackend::new(stub.to_str().unwrap());
        let r = Resolver::new(Arc::new(engine));
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("k8s-own")).unwrap();
        assert_eq!(r.resolve(&root, "web").await.unwrap().id, ID);
        let own = r.resolve(&root, "k8s-own").await.unwrap();
        assert_eq!((own.id.as_str(), own.configured_term), ("k8s-own", None));
        match r.resolve(&root, "nowhere").await {
            Err(ContainerError::Engine(PreflightError::NotFound { message })) => {
                assert!(message.contains("No such container: nowhere"), "{message}")
            }
            Err(other) => panic!("{other}"),
            Ok(t) => panic!("{t:?}"),
        }
    }

    #[test]
    fn names_are_cached_briefly_and_forgotten_on_demand() {
        let r = Resolver::new(Arc::new(crate::backend::cli::CliBackend::new("podman")));
        let t = Target {
            id: ID.into(),
            configured_term: None,
            group_add: vec![],
        };
        r.remember("web", &t);
        assert_eq!(r.cached("web"), Some(t));
        r.forget("web");
        assert_eq!(r.cached("web"), None);
    }
}
