//! What to run: the client's exec request and the command lines built
//! from it, in two parts:
//!
//! - [`request`]: the request itself ([`ExecSpec`], [`Door`],
//!   [`SessionKind`], [`TermSize`]) and its validation, which every door's
//!   request passes before anything is spawned;
//! - [`cli`]: the command line a local child runs, built from a validated
//!   request ([`RuntimeCommand`]: `docker exec -i [-t] …`, `docker attach`
//!   for the CLI backend, or the command itself for the host backend).
//!
//! What both parts need (the default command, the session marker's
//! variable) lives here; everything else is re-exported, so
//! `crate::command::…` names every item.

pub mod cli;
pub mod request;

pub use cli::{RuntimeCommand, DETACH_KEYS};
pub(crate) use request::is_container_ref;
pub use request::{
    validate_instance_id, validate_session_id, Door, ExecSpec, SessionKind, TermSize,
    ValidationError, MAX_ARGV_BYTES, MAX_COMMAND_ARGS, MAX_CONTAINER_ID_LEN, MAX_ENV_VARS,
    MAX_INSTANCE_ID_LEN, MAX_SESSION_ID_LEN, MAX_TERM_DIM,
};

/// Environment variable execd adds to every session's process. Descendants
/// inherit it, which is how the orphan reaper finds the whole process tree of
/// a session, inside or outside the container.
pub const SESSION_ENV: &str = "EXECD_SESSION_ID";

/// Command used when the request names none.
pub const DEFAULT_COMMAND: &str = "/bin/sh";

/// Requests the tests of both parts build on.
#[cfg(test)]
pub(crate) mod test_support {
    use super::ExecSpec;
    use crate::backend::BackendConfig;

    pub fn docker() -> BackendConfig {
        BackendConfig::Cli {
            program: "docker".into(),
        }
    }

    pub fn host() -> BackendConfig {
        BackendConfig::Host
    }

    pub fn spec(container: &str) -> ExecSpec {
        ExecSpec {
            container_id: container.into(),
            ..Default::default()
        }
    }
}
