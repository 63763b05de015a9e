//! A client's exec request as the session manager sees it, and its
//! validation.
//!
//! Validation happens before anything is spawned. Its first job is that no
//! client-supplied string can ever be read by the runtime CLI as a flag: the
//! container id must look like a name or id, paths must be absolute, users
//! must not start with `-`, and every value is passed as the separate
//! argument that follows its flag (the CLIs' flag parsers take that argument
//! verbatim, see [`super::cli`]).

use std::collections::BTreeMap;

use super::{DEFAULT_COMMAND, SESSION_ENV};
use crate::backend::config::BackendConfig;

/// Longest accepted container id or name.
pub const MAX_CONTAINER_ID_LEN: usize = 255;
/// Most command arguments accepted.
pub const MAX_COMMAND_ARGS: usize = 4096;
/// Most environment variables accepted.
pub const MAX_ENV_VARS: usize = 1024;
/// Longest accepted session id.
pub const MAX_SESSION_ID_LEN: usize = 128;
/// Longest accepted instance id. It is stored with the session, repeated in
/// every listing and watch event, and logged, so it is bounded like a
/// session id.
pub const MAX_INSTANCE_ID_LEN: usize = 128;
/// Upper bound for the total size of argv + env strings (well below ARG_MAX).
pub const MAX_ARGV_BYTES: usize = 256 * 1024;
/// Largest terminal dimension accepted; larger values are clamped.
pub const MAX_TERM_DIM: u16 = 4096;

/// Why a request was refused. Every variant names the offending field.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ValidationError {
    #[error("container_id is empty")]
    MissingContainer,
    #[error("container_id is set but execd runs in host-exec mode, which has no containers")]
    ContainerInHostMode,
    #[error("container_id {0:?} is not a container name or id (allowed: [A-Za-z0-9][A-Za-z0-9_.-]*, at most {MAX_CONTAINER_ID_LEN} bytes)")]
    BadContainerId(String),
    #[error("command[{index}] contains a NUL byte")]
    NulInCommand { index: usize },
    #[error("command has {0} arguments; at most {MAX_COMMAND_ARGS} are allowed")]
    TooManyArgs(usize),
    #[error("command[0] is empty")]
    EmptyProgram,
    #[error("env has {0} variables; at most {MAX_ENV_VARS} are allowed")]
    TooManyEnv(usize),
    #[error("env key {0:?} is invalid (it must be non-empty and contain no '=' or NUL)")]
    BadEnvKey(String),
    #[error("env key {0:?} is reserved by execd")]
    ReservedEnvKey(String),
    #[error("env value of {0:?} contains a NUL byte")]
    NulInEnvValue(String),
    #[error("command and env together are {0} bytes; at most {MAX_ARGV_BYTES} are allowed")]
    ArgvTooLarge(usize),
    #[error("working_dir {0:?} is invalid (it must be an absolute path without NUL bytes)")]
    BadWorkingDir(String),
    #[error("user {0:?} is invalid (allowed: name or uid, optionally :group or :gid)")]
    BadUser(String),
    #[error(
        "session_id {0:?} is invalid (allowed: [A-Za-z0-9_.:-], 1 to {MAX_SESSION_ID_LEN} bytes)"
    )]
    BadSessionId(String),
    #[error(
        "instance_id {0:?} is invalid (allowed: empty, or [A-Za-z0-9_.:-], at most {MAX_INSTANCE_ID_LEN} bytes)"
    )]
    BadInstanceId(String),
    #[error("attach needs a container; execd runs in host-exec mode, which has none")]
    AttachInHostMode,
}

/// Which front door a session came in by (for listings, metrics and logs;
/// the session manager treats them all alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Door {
    /// `exec_service.ExecService/ExecStream`.
    #[default]
    Grpc,
    /// A CRI `Exec`/`Attach` URL.
    Cri,
    /// The Kubernetes pod exec/attach paths.
    Kube,
    /// The Docker-style HTTP exec API.
    Docker,
    /// The function system's WebSocket protocol (`/terminal/ws`).
    Terminal,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Cri => "cri",
            Door::Kube => "kube",
            Door::Docker => "docker",
            Door::Terminal => "terminal",
        }
    }
}

/// What a session runs: a new process, or the container's main process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SessionKind {
    #[default]
    Exec,
    /// Attached to the container's PID 1; ending the session never stops it.
    Attach,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Exec => "exec",
            SessionKind::Attach => "attach",
        }
    }
}

/// A client's exec request, as the session manager sees it (no gRPC types).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// The front door it came in by.
    pub door: Door,
    pub kind: SessionKind,
    /// Container name or id; empty in host-exec mode.
    pub container_id: String,
    /// argv; empty means [`DEFAULT_COMMAND`].
    pub command: Vec<String>,
    pub tty: bool,
    /// Initial size; 0 means the default (24 rows, 80 columns).
    pub rows: i32,
    pub cols: i32,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    pub user: String,
    /// Platform instance the session is counted under; may be empty.
    pub instance_id: String,
    /// Opaque key of whoever asked for the session, derived by the server
    /// from the client's credential (never the credential itself). Sessions
    /// with the same non-empty owner count against
    /// [`Limits::max_sessions_per_owner`](crate::registry::Limits); empty
    /// means uncounted. Not client input, so not validated.
    pub owner: String,
    /// Attach only: forward the client's input to the container's main
    /// process (`--no-stdin` otherwise). Exec sessions always get `-i`.
    pub attach_stdin: bool,
}

/// Terminal size in character cells, always within `1..=MAX_TERM_DIM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

impl Default for TermSize {
    fn default() -> Self {
        TermSize { rows: 24, cols: 80 }
    }
}

impl TermSize {
    /// Maps a client's size onto a usable one: 0 or less selects the default
    /// for that dimension, more than [`MAX_TERM_DIM`] is clamped to it.
    pub fn from_client(rows: i32, cols: i32) -> TermSize {
        let default = TermSize::default();
        TermSize {
            rows: clamp_dim(rows, default.rows),
            cols: clamp_dim(cols, default.cols),
        }
    }
}

fn clamp_dim(value: i32, default: u16) -> u16 {
    if value <= 0 {
        default
    } else {
        value.min(i32::from(MAX_TERM_DIM)) as u16
    }
}

/// Checks a session id chosen by a client.
pub fn validate_session_id(id: &str) -> Result<(), ValidationError> {
    let ok = !id.is_empty() && id.len() <= MAX_SESSION_ID_LEN && id.bytes().all(is_id_byte);
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadSessionId(truncate_for_message(id)))
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// Checks an instance id: empty (the session is not counted under any
/// instance) or a session-id-like string.
pub fn validate_instance_id(id: &str) -> Result<(), ValidationError> {
    if id.len() <= MAX_INSTANCE_ID_LEN && id.bytes().all(is_id_byte) {
        Ok(())
    } else {
        Err(ValidationError::BadInstanceId(truncate_for_message(id)))
    }
}

pub(crate) fn is_container_ref(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CONTAINER_ID_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_user_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 256
        && !part.starts_with('-')
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_valid_user(user: &str) -> bool {
    let mut parts = user.splitn(2, ':');
    let name_ok = parts.next().is_some_and(is_user_part);
    let group_ok = parts.next().is_none_or(is_user_part);
    name_ok && group_ok
}

/// Error messages quote client input; keep them short.
fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl ExecSpec {
    /// Checks every client-controlled field for a server whose sessions
    /// run as `backend` says (in containers, or on the host). Nothing may
    /// be spawned for a spec that fails here.
    pub fn validate(&self, backend: &BackendConfig) -> Result<(), ValidationError> {
        let in_containers = backend.has_containers();
        if self.kind == SessionKind::Attach && !in_containers {
            return Err(ValidationError::AttachInHostMode);
        }
        match in_containers {
            true => {
                if self.container_id.is_empty() {
                    return Err(ValidationError::MissingContainer);
                }
                if !is_container_ref(&self.container_id) {
                    return Err(ValidationError::BadContainerId(truncate_for_message(
                        &self.container_id,
                    )));
                }
            }
            false => {
                if !self.container_id.is_empty() {
                    return Err(ValidationError::ContainerInHostMode);
                }
            }
        }
        validate_instance_id(&self.instance_id)?;
        if self.command.len() > MAX_COMMAND_ARGS {
            return Err(ValidationError::TooManyArgs(self.command.len()));
        }
        if self.command.first().is_some_and(|p| p.is_empty()) {
            return Err(ValidationError::EmptyProgram);
        }
        if let Some(index) = self.command.iter().position(|a| a.contains('\0')) {
            return Err(ValidationError::NulInCommand { index });
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(ValidationError::TooManyEnv(self.env.len()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ValidationError::BadEnvKey(truncate_for_message(key)));
            }
            if key == SESSION_ENV {
                return Err(ValidationError::ReservedEnvKey(key.clone()));
            }
            if value.contains('\0') {
                return Err(ValidationError::NulInEnvValue(truncate_for_message(key)));
            }
        }
        let argv_bytes: usize = self.command.iter().map(|a| a.len() + 1).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        if argv_bytes > MAX_ARGV_BYTES {
            return Err(ValidationError::ArgvTooLarge(argv_bytes));
        }
        if !self.working_dir.is_empty()
            && (!self.working_dir.starts_with('/') || self.working_dir.contains('\0'))
        {
            return Err(ValidationError::BadWorkingDir(truncate_for_message(
                &self.working_dir,
            )));
        }
        if !self.user.is_empty() && !is_valid_user(&self.user) {
            return Err(ValidationError::BadUser(truncate_for_message(&self.user)));
        }
        Ok(())
    }

    /// The argv to run, with the default applied. An attach runs nothing
    /// new (it joins PID 1), so it has none.
    pub fn effective_command(&self) -> Vec<String> {
        if self.kind == SessionKind::Attach {
            return Vec::new();
        }
        if self.command.is_empty() {
            vec![DEFAULT_COMMAND.to_string()]
        } else {
            self.command.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::test_support::{docker, host, spec};

    #[test]
    fn rejects_container_ids_that_could_be_flags_or_paths() {
        for bad in [
            "-it",
            "--privileged",
            "a/b",
            "a b",
            "a\0b",
            "",
            "ünï",
            ".hidden",
            "_x",
        ] {
            assert!(spec(bad).validate(&docker()).is_err(), "{bad:?} accepted");
        }
        assert!(spec(&"a".repeat(300)).validate(&docker()).is_err());
        for good in ["web", "3f2a9c", "my_app.1-2", &"a".repeat(64)] {
            spec(good).validate(&docker()).unwrap();
        }
    }

    #[test]
    fn empty_container_needs_host_mode() {
        assert_eq!(
            spec("").validate(&docker()),
            Err(ValidationError::MissingContainer)
        );
        spec("").validate(&host()).unwrap();
        assert_eq!(
            spec("c").validate(&host()),
            Err(ValidationError::ContainerInHostMode)
        );
    }

    #[test]
    fn rejects_bad_env() {
        for (key, value) in [("", "v"), ("A=B", "v"), ("A\0", "v"), ("A", "v\0")] {
            let mut s = spec("c");
            s.env.insert(key.into(), value.into());
            assert!(s.validate(&docker()).is_err(), "{key:?}={value:?} accepted");
        }
        let mut s = spec("c");
        s.env.insert(SESSION_ENV.into(), "spoof".into());
        assert!(matches!(
            s.validate(&docker()),
            Err(ValidationError::ReservedEnvKey(_))
        ));
    }

    #[test]
    fn rejects_nul_in_args_and_oversized_argv() {
        let mut s = spec("c");
        s.command = vec!["echo".into(), "a\0b".into()];
        assert_eq!(
            s.validate(&docker()),
            Err(ValidationError::NulInCommand { index: 1 })
        );
        s.command = vec!["x".into(); MAX_COMMAND_ARGS + 1];
        assert!(matches!(
            s.validate(&docker()),
            Err(ValidationError::TooManyArgs(_))
        ));
        s.command = vec!["x".repeat(MAX_ARGV_BYTES)];
        assert!(matches!(
            s.validate(&docker()),
            Err(ValidationError::ArgvTooLarge(_))
        ));
        s.command = vec![String::new()];
        assert_eq!(s.validate(&docker()), Err(ValidationError::EmptyProgram));
    }

    #[test]
    fn rejects_bad_workdir_and_user() {
        for dir in ["tmp", "./x", "/a\0b", "-w"] {
            let mut s = spec("c");
            s.working_dir = dir.into();
            assert!(s.validate(&docker()).is_err(), "{dir:?} accepted");
        }
        for user in [
            "-u", "a:b:c", "root\0", "a b", ":", "a:", ":b", "root:-g", "../x/y",
        ] {
            let mut s = spec("c");
            s.user = user.into();
            assert!(s.validate(&docker()).is_err(), "{user:?} accepted");
        }
        for user in ["root", "1000", "1000:1000", "app:app", "www-data"] {
            let mut s = spec("c");
            s.user = user.into();
            s.validate(&docker()).unwrap();
        }
    }

    #[test]
    fn session_ids() {
        validate_session_id("a1-b2_c3.d:e").unwrap();
        for bad in ["", "a b", "a\nb", "ä", &"x".repeat(MAX_SESSION_ID_LEN + 1)] {
            assert!(validate_session_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn instance_ids() {
        for good in [
            "",
            "fn-42",
            "a1-b2_c3.d:e",
            &"x".repeat(MAX_INSTANCE_ID_LEN),
        ] {
            validate_instance_id(good).unwrap();
            let mut s = spec("c");
            s.instance_id = good.into();
            s.validate(&docker()).unwrap();
        }
        let huge = "i".repeat(5 * 1024 * 1024 / 2);
        for bad in [
            "a b",
            "a\nb",
            "\u{1b}[31m",
            "ä",
            "a/b",
            &"x".repeat(MAX_INSTANCE_ID_LEN + 1),
            &huge,
        ] {
            let mut s = spec("c");
            s.instance_id = bad.into();
            let err = s.validate(&docker()).unwrap_err();
            assert!(
                matches!(err, ValidationError::BadInstanceId(_)),
                "{bad:?}: {err}"
            );
            // The message quotes at most a short, escaped prefix.
            assert!(err.to_string().len() < 400, "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn term_sizes_are_clamped() {
        assert_eq!(TermSize::from_client(0, 0), TermSize { rows: 24, cols: 80 });
        assert_eq!(
            TermSize::from_client(-5, 100),
            TermSize {
                rows: 24,
                cols: 100
            }
        );
        assert_eq!(
            TermSize::from_client(i32::MAX, 50_000),
            TermSize {
                rows: MAX_TERM_DIM,
                cols: MAX_TERM_DIM
            }
        );
    }
}
