//! The request bodies of the Docker door and what they become: an
//! [`ExecConfig`] remembered between create and start, and the session's
//! [`ExecSpec`].
//!
//! Two spellings of one request: the Docker Engine API's `ExecConfig`
//! (PascalCase, `POST /containers/{id}/exec`) and the pod API's
//! `PodExecConfig` (camelCase, `POST /api/v1/namespaces/{ns}/pods/{pod}/exec`).
//! Unknown fields are ignored, as the engine does.

use std::collections::BTreeMap;

use execd_session::{BackendConfig, Door, ExecSpec};
use serde::Deserialize;

use super::table::Size;
use super::DockerError;

/// An exec as created: everything needed to start it and to inspect it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExecConfig {
    pub(crate) container_id: String,
    pub(crate) instance_id: String,
    pub(crate) cmd: Vec<String>,
    pub(crate) tty: bool,
    pub(crate) attach_stdin: bool,
    pub(crate) attach_stdout: bool,
    pub(crate) attach_stderr: bool,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) working_dir: String,
    pub(crate) user: String,
    /// Initial terminal size (height, width), from `ConsoleSize` or a
    /// resize that came before the start.
    pub(crate) size: Option<Size>,
}

/// `POST /containers/{id}/exec` (Docker Engine API).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct EngineExecConfig {
    pub(crate) attach_stdin: bool,
    pub(crate) attach_stdout: bool,
    pub(crate) attach_stderr: bool,
    pub(crate) tty: bool,
    pub(crate) env: Option<Vec<String>>,
    pub(crate) working_dir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) cmd: Option<Vec<String>>,
    pub(crate) console_size: Option<[u32; 2]>,
    pub(crate) privileged: bool,
    /// Ignored: execd's terminal sessions cannot be detached from.
    #[allow(dead_code)]
    pub(crate) detach_keys: Option<String>,
}

/// `POST /api/v1/namespaces/{ns}/pods/{pod}/exec` (the pod API).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PodExecConfig {
    pub(crate) tty: bool,
    pub(crate) attach_stdin: bool,
    pub(crate) attach_stdout: bool,
    pub(crate) attach_stderr: bool,
    pub(crate) cmd: Option<Vec<String>>,
    pub(crate) env: Option<Vec<String>>,
    pub(crate) working_dir: Option<String>,
    pub(crate) user: Option<String>,
}

/// `POST …/exec/{id}/start`: Docker's `ExecStartCheck` or a
/// `PodExecConfig`; only `Detach` and `ConsoleSize` matter (the exec's
/// create decided the rest).
#[derive(Debug, Default)]
pub(crate) struct StartRequest {
    pub(crate) detach: bool,
    pub(crate) console_size: Option<Size>,
}

/// Most bytes read from a request body (argv and env are capped far below).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

pub(crate) fn parse_json<T: for<'de> Deserialize<'de> + Default>(
    body: &[u8],
) -> Result<T, DockerError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))
}

pub(crate) fn parse_start(body: &[u8]) -> Result<StartRequest, DockerError> {
    let value: serde_json::Value =
        parse_json::<Option<serde_json::Value>>(body)?.unwrap_or_default();
    if !value.is_object() && !value.is_null() {
        return Err(DockerError::BadRequest(
            "the start body must be a JSON object".into(),
        ));
    }
    let detach = match value.get("Detach").or_else(|| value.get("detach")) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err(DockerError::BadRequest("Detach must be a boolean".into())),
    };
    let console_size = match value.get("ConsoleSize") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let [h, w]: [u32; 2] = serde_json::from_value(v.clone()).map_err(|_| {
                DockerError::BadRequest("ConsoleSize must be [height, width]".into())
            })?;
            Some(size_from(h, w))
        }
    };
    Ok(StartRequest {
        detach,
        console_size,
    })
}

fn size_from(h: u32, w: u32) -> Size {
    (
        i32::try_from(h).unwrap_or(i32::MAX),
        i32::try_from(w).unwrap_or(i32::MAX),
    )
}

/// `["K=V", …]` into a map. An entry without `=` is skipped: the engine
/// reads it as "unset K", and execd only adds variables.
fn env_map(env: Option<Vec<String>>) -> BTreeMap<String, String> {
    env.unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn require_cmd(cmd: Option<Vec<String>>) -> Result<Vec<String>, DockerError> {
    match cmd {
        Some(cmd) if !cmd.is_empty() => Ok(cmd),
        _ => Err(DockerError::BadRequest("No exec command specified".into())),
    }
}

impl EngineExecConfig {
    pub(crate) fn into_config(self, container_id: &str) -> Result<ExecConfig, DockerError> {
        if self.privileged {
            return Err(DockerError::Privileged);
        }
        Ok(ExecConfig {
            container_id: container_id.to_string(),
            // Counted per container: the engine API has no other instance.
            instance_id: container_id.to_string(),
            cmd: require_cmd(self.cmd)?,
            tty: self.tty,
            attach_stdin: self.attach_stdin,
            attach_stdout: self.attach_stdout,
            attach_stderr: self.attach_stderr,
            env: env_map(self.env),
            working_dir: self.working_dir.unwrap_or_default(),
            user: self.user.unwrap_or_default(),
            size: self
                .console_size
                .filter(|[h, w]| *h > 0 && *w > 0)
                .map(|[h, w]| size_from(h, w)),
        })
    }
}

impl PodExecConfig {
    pub(crate) fn into_config(
        self,
        pod: &str,
        container: Option<&str>,
    ) -> Result<ExecConfig, DockerError> {
        // The engine's request in the other spelling, without what the pod
        // API has no word for (a console size, privileged); only the
        // instance is the pod rather than the container.
        let engine = EngineExecConfig {
            attach_stdin: self.attach_stdin,
            attach_stdout: self.attach_stdout,
            attach_stderr: self.attach_stderr,
            tty: self.tty,
            env: self.env,
            working_dir: self.working_dir,
            user: self.user,
            cmd: self.cmd,
            ..EngineExecConfig::default()
        };
        let container_id = container.filter(|c| !c.is_empty()).unwrap_or(pod);
        Ok(ExecConfig {
            instance_id: pod.to_string(),
            ..engine.into_config(container_id)?
        })
    }
}

impl ExecConfig {
    pub(crate) fn spec(&self) -> ExecSpec {
        let (rows, cols) = self.size.unwrap_or((0, 0));
        ExecSpec {
            door: Door::Docker,
            container_id: self.container_id.clone(),
            command: self.cmd.clone(),
            tty: self.tty,
            rows,
            cols,
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            user: self.user.clone(),
            instance_id: self.instance_id.clone(),
            ..Default::default()
        }
    }

    /// Refuses what the session manager would refuse, at create time (as
    /// the engine does), so the client learns it before starting.
    pub(crate) fn validate(&self, mode: &BackendConfig) -> Result<(), DockerError> {
        self.spec()
            .validate(mode)
            .map_err(|e| DockerError::Session(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_config() {
        let c: EngineExecConfig = parse_json(
            br#"{"AttachStdout":true,"Tty":true,"Env":["A=1","B","C=x=y"],"Cmd":["sh"],"ConsoleSize":[30,100],"DetachKeys":"ctrl-p"}"#,
        )
        .unwrap();
        let c = c.into_config("web").unwrap();
        assert_eq!(c.size, Some((30, 100)));
        assert_eq!(c.env.len(), 2);
        assert_eq!(c.env["C"], "x=y");
        assert!(c.tty && c.attach_stdout && !c.attach_stdin);
        let p: EngineExecConfig = parse_json(br#"{"Cmd":["sh"],"Privileged":true}"#).unwrap();
        assert!(matches!(p.into_config("web"), Err(DockerError::Privileged)));
        let e: EngineExecConfig = parse_json(br#"{"Cmd":[]}"#).unwrap();
        assert!(matches!(
            e.into_config("web"),
            Err(DockerError::BadRequest(_))
        ));
        assert!(parse_json::<EngineExecConfig>(b"{").is_err());
        assert!(parse_json::<EngineExecConfig>(br#"{"Cmd":"sh"}"#).is_err());
    }

    #[test]
    fn pod_config() {
        let c: PodExecConfig = parse_json(
            br#"{"tty":false,"attachStdout":true,"cmd":["echo","hi"],"workingDir":"/"}"#,
        )
        .unwrap();
        let c = c.into_config("nginx", None).unwrap();
        assert_eq!(
            (c.container_id.as_str(), c.instance_id.as_str()),
            ("nginx", "nginx")
        );
        assert_eq!(c.working_dir, "/");
    }

    #[test]
    fn start_bodies() {
        assert!(!parse_start(b"").unwrap().detach);
        assert!(parse_start(br#"{"Detach":true}"#).unwrap().detach);
        assert_eq!(
            parse_start(br#"{"Detach":false,"Tty":true,"ConsoleSize":[5,6]}"#)
                .unwrap()
                .console_size,
            Some((5, 6))
        );
        assert!(parse_start(br#"{"tty":true,"cmd":["sh"]}"#).is_ok());
        assert!(parse_start(b"[1]").is_err());
        assert!(parse_start(b"{").is_err());
    }
}
