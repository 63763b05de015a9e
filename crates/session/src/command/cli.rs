//! The command line a local child runs, built from a validated request:
//! `docker exec`/`docker attach` for the CLI backend
//! ([`ExecSpec::cli_command`]), the command itself for the host backend
//! ([`ExecSpec::host_command`]).

use std::ffi::OsString;

use super::{ExecSpec, SessionKind, DEFAULT_COMMAND, SESSION_ENV};

/// Detach keys given to the runtime CLI in terminal mode. The default
/// (ctrl-p, ctrl-q) would let a keystroke pair make the CLI leave the
/// process running in the container unobserved; this six-byte sequence of
/// rare control codes is practically never typed.
pub const DETACH_KEYS: &str = "ctrl-^,ctrl-_,ctrl-^,ctrl-_,ctrl-^,ctrl-_";

/// A fully built command line, ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Extra environment for the spawned process itself (host-exec mode
    /// only: in container mode everything travels as `-e` arguments).
    pub env: Vec<(String, String)>,
    /// Working directory for the spawned process itself (host-exec mode).
    pub current_dir: Option<String>,
    /// User to switch to before exec (host-exec mode).
    pub user: Option<String>,
}

impl RuntimeCommand {
    /// The runtime CLI with `args`: everything for the container travels
    /// on its command line, so the CLI process itself gets nothing else.
    fn cli(runtime_cli: &str, args: Vec<OsString>) -> Self {
        RuntimeCommand {
            program: runtime_cli.into(),
            args,
            env: Vec::new(),
            current_dir: None,
            user: None,
        }
    }
}

impl ExecSpec {
    /// The environment the process gets on top of the container's own:
    /// the client's variables, `TERM=xterm` for terminals that did not name
    /// one, and the session marker.
    pub fn effective_env(&self, session_id: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.tty && !self.env.contains_key("TERM") {
            env.push(("TERM".to_string(), "xterm".to_string()));
        }
        env.push((SESSION_ENV.to_string(), session_id.to_string()));
        env
    }

    /// `<runtime_cli> exec …` (or `attach`) into the container. Call
    /// [`ExecSpec::validate`] first.
    pub fn cli_command(&self, runtime_cli: &str, session_id: &str) -> RuntimeCommand {
        if self.kind == SessionKind::Attach {
            return self.attach_command(runtime_cli);
        }
        let mut args: Vec<OsString> = vec!["exec".into(), "-i".into()];
        if self.tty {
            args.push("-t".into());
            args.push("--detach-keys".into());
            args.push(DETACH_KEYS.into());
        }
        for (key, value) in self.effective_env(session_id) {
            args.push("-e".into());
            args.push(format!("{key}={value}").into());
        }
        if !self.working_dir.is_empty() {
            args.push("-w".into());
            args.push(self.working_dir.clone().into());
        }
        if !self.user.is_empty() {
            args.push("-u".into());
            args.push(self.user.clone().into());
        }
        args.push(self.container_id.clone().into());
        args.extend(self.effective_command().into_iter().map(OsString::from));
        RuntimeCommand::cli(runtime_cli, args)
    }

    /// The command itself, to run on this host. Call
    /// [`ExecSpec::validate`] first.
    pub fn host_command(&self, session_id: &str) -> RuntimeCommand {
        let mut argv = self.effective_command().into_iter().map(OsString::from);
        let program = argv.next().unwrap_or_else(|| DEFAULT_COMMAND.into());
        RuntimeCommand {
            program,
            args: argv.collect(),
            env: self.effective_env(session_id),
            current_dir: (!self.working_dir.is_empty()).then(|| self.working_dir.clone()),
            user: (!self.user.is_empty()).then(|| self.user.clone()),
        }
    }

    /// `<cli> attach` to the container's main process. Why each flag:
    ///
    /// - `--sig-proxy=false`: ending the session signals (kills) the CLI;
    ///   with proxying on, that signal would be forwarded to PID 1 and stop
    ///   the container.
    /// - `--detach-keys`: the rare sequence of [`DETACH_KEYS`], so no usual
    ///   keystroke (the default is ctrl-p ctrl-q) ends the attach behind the
    ///   client's back; typing it only detaches, PID 1 keeps running.
    /// - `--no-stdin` unless the client streams input: then nothing the
    ///   CLI's stdin does (its EOF included) reaches PID 1.
    ///
    /// No `-e` marker: an attach starts no process in the container, so
    /// there is nothing there for the reaper to find or kill.
    fn attach_command(&self, runtime_cli: &str) -> RuntimeCommand {
        let mut args: Vec<OsString> = vec![
            "attach".into(),
            "--sig-proxy=false".into(),
            "--detach-keys".into(),
            DETACH_KEYS.into(),
        ];
        if !self.attach_stdin {
            args.push("--no-stdin".into());
        }
        args.push(self.container_id.clone().into());
        RuntimeCommand::cli(runtime_cli, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::test_support::{docker, host, spec};
    use crate::command::ValidationError;

    fn args(cmd: &RuntimeCommand) -> Vec<String> {
        cmd.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn builds_full_docker_command_line() {
        let mut s = spec("web-1");
        s.tty = true;
        s.command = vec!["ls".into(), "-la".into()];
        s.env.insert("A".into(), "1".into());
        s.working_dir = "/tmp".into();
        s.user = "app:app".into();
        s.validate(&docker()).unwrap();
        let cmd = s.cli_command("docker", "abc");
        assert_eq!(cmd.program, "docker");
        assert_eq!(
            args(&cmd),
            [
                "exec",
                "-i",
                "-t",
                "--detach-keys",
                DETACH_KEYS,
                "-e",
                "A=1",
                "-e",
                "TERM=xterm",
                "-e",
                "EXECD_SESSION_ID=abc",
                "-w",
                "/tmp",
                "-u",
                "app:app",
                "web-1",
                "ls",
                "-la"
            ]
        );
    }

    #[test]
    fn pipe_mode_has_no_tty_flag_and_no_term_and_default_shell() {
        let s = spec("c1");
        let cmd = s.cli_command("docker", "id1");
        assert_eq!(
            args(&cmd),
            ["exec", "-i", "-e", "EXECD_SESSION_ID=id1", "c1", "/bin/sh"]
        );
    }

    #[test]
    fn client_term_wins_over_default() {
        let mut s = spec("c1");
        s.tty = true;
        s.env.insert("TERM".into(), "vt100".into());
        let env = s.effective_env("x");
        assert!(env.contains(&("TERM".into(), "vt100".into())));
        assert!(!env.contains(&("TERM".into(), "xterm".into())));
    }

    #[test]
    fn attach_joins_pid1_without_signals_or_stdin_unless_asked() {
        let mut s = spec("web");
        s.kind = SessionKind::Attach;
        s.command = vec!["ignored".into()];
        s.validate(&docker()).unwrap();
        assert!(s.effective_command().is_empty());
        let cmd = s.cli_command("docker", "id");
        assert_eq!(
            args(&cmd),
            [
                "attach",
                "--sig-proxy=false",
                "--detach-keys",
                DETACH_KEYS,
                "--no-stdin",
                "web"
            ]
        );
        s.attach_stdin = true;
        assert!(!args(&s.cli_command("docker", "id")).contains(&"--no-stdin".to_string()));
        assert_eq!(s.validate(&host()), Err(ValidationError::AttachInHostMode));
    }

    #[test]
    fn runtime_cli_is_configurable() {
        assert_eq!(spec("c").cli_command("podman", "s").program, "podman");
    }

    #[test]
    fn host_mode_runs_command_directly() {
        let mut s = spec("");
        s.command = vec!["echo".into(), "hi".into()];
        s.working_dir = "/tmp".into();
        s.validate(&host()).unwrap();
        let cmd = s.host_command("s1");
        assert_eq!(cmd.program, "echo");
        assert_eq!(args(&cmd), ["hi"]);
        assert_eq!(cmd.current_dir.as_deref(), Some("/tmp"));
        assert!(cmd.env.contains(&(SESSION_ENV.into(), "s1".into())));
    }
}
