//! The exec instances the Docker door knows about, from create to some
//! minutes after they finished.
//!
//! Docker's exec API is three calls (create, start, inspect) where execd's
//! other doors have one stream, so the door has to remember an exec between
//! calls. The table is bounded every way:
//!
//! - created-but-never-started execs expire after [`CREATED_TTL`]; at most
//!   [`MAX_CREATED`] wait at once, and at most [`MAX_CREATED_PER_OWNER`] of
//!   one client (token), so one client cannot take every slot; creating
//!   more is refused (429);
//! - a started exec hands its request (command, environment) to the
//!   session and keeps only what `GET /exec/{id}/json` shows ([`Shown`]:
//!   never the environment, the command cut to [`SHOWN_COMMAND`] bytes), so
//!   a finished exec costs about a kilobyte whatever it ran;
//! - finished ones stay readable for at least [`FINISHED_TTL`], with the
//!   oldest forgotten first beyond [`MAX_FINISHED`]. Running ones are
//!   bounded by the session limits.
//!
//! Every exec belongs to the client that created it (the owner key of its
//! token; without tokens every client is the same one): to any other, its
//! id does not exist (404 on start, resize and inspect).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::api::ExecConfig;
use super::DockerError;

/// How long a created exec waits for its start.
pub(crate) const CREATED_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a finished exec stays readable (its exit code, for clients that
/// ask after the stream ended).
pub(crate) const FINISHED_TTL: Duration = Duration::from_secs(5 * 60);
/// Most execs waiting for their start at once.
pub(crate) const MAX_CREATED: usize = 1024;
/// Most execs of one client waiting for their start at once.
pub const MAX_CREATED_PER_OWNER: usize = 256;
/// Most finished execs remembered (beyond the TTL only while under this).
pub(crate) const MAX_FINISHED: usize = 4096;
/// Most bytes of a command `GET /exec/{id}/json` shows.
pub const SHOWN_COMMAND: usize = 1024;

/// A terminal size as Docker sends it: height (rows), width (columns).
pub(crate) type Size = (i32, i32);

/// Where an exec is in its life.
enum State {
    /// The whole request, until a start takes it.
    Created(Box<ExecConfig>),
    /// Claimed by a start; resizes go to the session through `resize`.
    Running {
        resize: watch::Sender<Option<Size>>,
    },
    Finished {
        exit_code: Option<i32>,
        at: Instant,
    },
}

struct Entry {
    /// The creator's owner key; nobody else sees the exec.
    owner: String,
    shown: Shown,
    created_at: Instant,
    state: State,
}

/// What `GET …/json` shows of an exec: its settings and the start of its
/// command, never its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) container_id: String,
    pub(crate) entrypoint: String,
    /// Cut so that entrypoint and arguments stay within [`SHOWN_COMMAND`].
    pub(crate) arguments: Vec<String>,
    pub(crate) tty: bool,
    pub(crate) attach_stdin: bool,
    pub(crate) attach_stdout: bool,
    pub(crate) attach_stderr: bool,
    pub(crate) user: String,
}

impl Shown {
    fn of(config: &ExecConfig) -> Shown {
        let mut budget = SHOWN_COMMAND;
        let mut cut = |s: &str| -> Option<String> {
            if budget == 0 {
                return None;
            }
            let mut end = s.len().min(budget);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            budget = budget.saturating_sub(end.max(1));
            Some(s[..end].to_string())
        };
        let (entrypoint, arguments) = match config.cmd.split_first() {
            Some((first, rest)) => (
                cut(first).unwrap_or_default(),
                rest.iter().map_while(|a| cut(a)).collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        Shown {
            container_id: config.container_id.clone(),
            entrypoint,
            arguments,
            tty: config.tty,
            attach_stdin: config.attach_stdin,
            attach_stdout: config.attach_stdout,
            attach_stderr: config.attach_stderr,
            user: config.user.clone(),
        }
    }
}

/// What `GET …/json` reports about an exec.
pub(crate) struct Inspect {
    pub(crate) shown: Shown,
    pub(crate) running: bool,
    pub(crate) exit_code: Option<i32>,
}

/// What a start gets: the exec's configuration and where its resizes
/// arrive (the latest one wins; `None` until there is one after the start).
pub(crate) struct Claimed {
    pub(crate) config: ExecConfig,
    pub(crate) resizes: watch::Receiver<Option<Size>>,
}

#[derive(Default)]
pub(crate) struct ExecTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ExecTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere must not take the door down with it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an exec `owner` created, after dropping expired entries.
    pub(crate) fn create(
        &self,
        id: String,
        owner: &str,
        config: ExecConfig,
    ) -> Result<(), DockerError> {
        let mut entries = self.lock();
        sweep(&mut entries, Instant::now());
        let (mut waiting, mut theirs) = (0, 0);
        for e in entries.values() {
            if matches!(e.state, State::Created(_)) {
                waiting += 1;
                theirs += usize::from(e.owner == owner);
            }
        }
        if theirs >= MAX_CREATED_PER_OWNER {
            return Err(DockerError::TooManyCreatedByClient(MAX_CREATED_PER_OWNER));
        }
        if waiting >= MAX_CREATED {
            return Err(DockerError::TooManyCreated(MAX_CREATED));
        }
        entries.insert(
            id,
            Entry {
                owner: owner.to_string(),
                shown: Shown::of(&config),
                created_at: Instant::now(),
                state: State::Created(Box::new(config)),
            },
        );
        Ok(())
    }

    /// The entry `id` as `owner` may see it: another client's is missing.
    fn entry<'a>(
        entries: &'a mut HashMap<String, Entry>,
        id: &str,
        owner: &str,
    ) -> Result<&'a mut Entry, DockerError> {
        entries
            .get_mut(id)
            .filter(|e| e.owner == owner)
            .ok_or_else(|| DockerError::NoSuchExec(id.to_string()))
    }

    /// Moves a created exec to running, handing its request over; a second
    /// start gets `AlreadyStarted`.
    pub(crate) fn claim(&self, id: &str, owner: &str) -> Result<Claimed, DockerError> {
        let mut entries = self.lock();
        sweep(&mut entries, Instant::now());
        let entry = Self::entry(&mut entries, id, owner)?;
        if !matches!(entry.state, State::Created(_)) {
            return Err(DockerError::AlreadyStarted(id.to_string()));
        }
        let (resize, resizes) = watch::channel(None);
        match std::mem::replace(&mut entry.state, State::Running { resize }) {
            State::Created(config) => Ok(Claimed {
                config: *config,
                resizes,
            }),
            // Checked above, under the same lock.
            _ => Err(DockerError::AlreadyStarted(id.to_string())),
        }
    }

    /// Records the end of an exec. Called before its stream is closed, so a
    /// client that inspects right after EOF reads the exit code.
    pub(crate) fn finish(&self, id: &str, exit_code: Option<i32>) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(id) {
            entry.state = State::Finished {
                exit_code,
                at: Instant::now(),
            };
        }
        let finished = entries
            .values()
            .filter(|e| matches!(e.state, State::Finished { .. }))
            .count();
        if finished > MAX_FINISHED {
            forget_oldest_finished(&mut entries, finished - MAX_FINISHED);
        }
    }

    /// Applies a resize: before the start it becomes the initial size,
    /// while running it goes to the terminal, after the end it is moot.
    pub(crate) fn resize(&self, id: &str, owner: &str, size: Size) -> Result<(), DockerError> {
        let mut entries = self.lock();
        let entry = Self::entry(&mut entries, id, owner)?;
        match &mut entry.state {
            State::Created(config) => config.size = Some(size),
            State::Running { resize } => {
                resize.send_replace(Some(size));
            }
            // A client racing a process that just exited (`docker exec -it
            // c true`) must not get an error for its first resize.
            State::Finished { .. } => {}
        }
        Ok(())
    }

    pub(crate) fn inspect(&self, id: &str, owner: &str) -> Result<Inspect, DockerError> {
        let mut entries = self.lock();
        sweep(&mut entries, Instant::now());
        let entry = Self::entry(&mut entries, id, owner)?;
        let (running, exit_code) = match entry.state {
            State::Created(_) => (false, None),
            State::Running { .. } => (true, None),
            State::Finished { exit_code, .. } => (false, exit_code),
        };
        Ok(Inspect {
            shown: entry.shown.clone(),
            running,
            exit_code,
        })
    }
}

/// Drops created execs nobody started and finished ones past their TTL.
fn sweep(entries: &mut HashMap<String, Entry>, now: Instant) {
    entries.retain(|_, e| match e.state {
        State::Created(_) => now.duration_since(e.created_at) < CREATED_TTL,
        State::Running { .. } => true,
        State::Finished { at, .. } => now.duration_since(at) < FINISHED_TTL,
    });
}

fn forget_oldest_finished(entries: &mut HashMap<String, Entry>, count: usize) {
    let mut finished: Vec<(Instant, String)> = entries
        .iter()
        .filter_map(|(id, e)| match e.state {
            State::Finished { at, .. } => Some((at, id.clone())),
            _ => None,
        })
        .collect();
    finished.sort();
    for (_, id) in finished.into_iter().take(count) {
        entries.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ExecConfig {
        ExecConfig::default()
    }

    #[test]
    fn lifecycle_and_double_start() {
        let t = ExecTable::default();
        t.create("a".into(), "me", config()).unwrap();
        t.resize("a", "me", (30, 100)).unwrap();
        let claimed = t.claim("a", "me").unwrap();
        assert_eq!(claimed.config.size, Some((30, 100)));
        assert!(matches!(
            t.claim("a", "me"),
            Err(DockerError::AlreadyStarted(_))
        ));
        assert!(t.inspect("a", "me").unwrap().running);
        t.resize("a", "me", (10, 20)).unwrap();
        assert_eq!(*claimed.resizes.borrow(), Some((10, 20)));
        t.finish("a", Some(3));
        let i = t.inspect("a", "me").unwrap();
        assert!(!i.running);
        assert_eq!(i.exit_code, Some(3));
        assert!(matches!(
            t.claim("b", "me"),
            Err(DockerError::NoSuchExec(_))
        ));
    }

    #[test]
    fn execs_are_their_creators() {
        let t = ExecTable::default();
        t.create("a".into(), "me", config()).unwrap();
        assert!(matches!(
            t.claim("a", "you"),
            Err(DockerError::NoSuchExec(_))
        ));
        assert!(matches!(
            t.resize("a", "you", (1, 1)),
            Err(DockerError::NoSuchExec(_))
        ));
        assert!(matches!(
            t.inspect("a", "you"),
            Err(DockerError::NoSuchExec(_))
        ));
        // Still the creator's to start.
        t.claim("a", "me").unwrap();
    }

    #[test]
    fn bounded_per_owner_and_in_all() {
        let t = ExecTable::default();
        let owner = |i: usize| format!("owner-{}", i / MAX_CREATED_PER_OWNER);
        for i in 0..MAX_CREATED {
            t.create(format!("c{i}"), &owner(i), config()).unwrap();
        }
        assert!(matches!(
            t.create("x".into(), "owner-0", config()),
            Err(DockerError::TooManyCreatedByClient(_))
        ));
        assert!(matches!(
            t.create("x".into(), "someone-else", config()),
            Err(DockerError::TooManyCreated(_))
        ));
        for i in 0..MAX_CREATED {
            t.claim(&format!("c{i}"), &owner(i)).unwrap();
            t.finish(&format!("c{i}"), Some(0));
        }
        assert_eq!(t.lock().len(), MAX_CREATED);
        t.create("x".into(), "owner-0", config()).unwrap();
    }

    #[test]
    fn only_a_short_command_is_kept_once_started() {
        let big = ExecConfig {
            cmd: std::iter::once("sh".to_string())
                .chain((0..250).map(|_| "é".repeat(512)))
                .collect(),
            env: [("K".to_string(), "v".repeat(100_000))].into(),
            ..config()
        };
        let shown = Shown::of(&big);
        assert_eq!(shown.entrypoint, "sh");
        let kept: usize = shown.arguments.iter().map(String::len).sum();
        assert!(kept + 2 <= SHOWN_COMMAND && !shown.arguments.is_empty());
        let t = ExecTable::default();
        t.create("a".into(), "me", big).unwrap();
        let claimed = t.claim("a", "me").unwrap();
        assert_eq!(claimed.config.cmd.len(), 251, "the start gets it all");
        t.finish("a", Some(0));
        assert_eq!(t.inspect("a", "me").unwrap().shown, shown);
        assert!(matches!(
            t.lock().get("a").map(|e| &e.state),
            Some(State::Finished { .. })
        ));
    }

    #[test]
    fn expiry() {
        let mut entries = HashMap::new();
        let old = Instant::now() - CREATED_TTL - Duration::from_secs(1);
        let entry = |state| Entry {
            owner: String::new(),
            shown: Shown::default(),
            created_at: old,
            state,
        };
        entries.insert("old".to_string(), entry(State::Created(Box::default())));
        entries.insert(
            "done".to_string(),
            entry(State::Finished {
                exit_code: Some(0),
                at: Instant::now(),
            }),
        );
        sweep(&mut entries, Instant::now());
        assert!(!entries.contains_key("old"));
        assert!(entries.contains_key("done"));
    }
}
