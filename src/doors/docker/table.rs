//! The exec instances the Docker door knows about, from create to some
//! minutes after they finished.
//!
//! Docker's exec API is three calls (create, start, inspect) where execd's
//! other doors have one stream, so the door has to remember an exec between
//! calls. The table is bounded both ways: created-but-never-started execs
//! expire after [`CREATED_TTL`] and at most [`MAX_CREATED`] wait at once
//! (creating more is refused); finished ones stay readable for at least
//! [`FINISHED_TTL`], with the oldest forgotten first beyond
//! [`MAX_FINISHED`]. Running ones are bounded by the session limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::api::ExecConfig;
use super::DockerError;

/// How long a created exec waits for its start.
pub const CREATED_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a finished exec stays readable (its exit code, for clients that
/// ask after the stream ended).
pub const FINISHED_TTL: Duration = Duration::from_secs(5 * 60);
/// Most execs waiting for their start at once.
pub const MAX_CREATED: usize = 1024;
/// Most finished execs remembered (beyond the TTL only while under this).
pub const MAX_FINISHED: usize = 4096;

/// A terminal size as Docker sends it: height (rows), width (columns).
pub type Size = (i32, i32);

/// Where an exec is in its life.
enum State {
    Created,
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
    config: ExecConfig,
    created_at: Instant,
    state: State,
}

/// What `GET …/json` reports about an exec.
pub struct Inspect {
    pub config: ExecConfig,
    pub running: bool,
    pub exit_code: Option<i32>,
}

/// What a start gets: the exec's configuration and where its resizes
/// arrive (the latest one wins; `None` until there is one after the start).
pub struct Claimed {
    pub config: ExecConfig,
    pub resizes: watch::Receiver<Option<Size>>,
}

#[derive(Default)]
pub struct ExecTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ExecTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere must not take the door down with it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a created exec, after dropping expired entries.
    pub fn create(&self, id: String, config: ExecConfig) -> Result<(), DockerError> {
        let mut entries = self.lock();
        sweep(&mut entries, Instant::now());
        let waiting = entries
            .values()
            .filter(|e| matches!(e.state, State::Created))
            .count();
        if waiting >= MAX_CREATED {
            return Err(DockerError::TooManyCreated(MAX_CREATED));
        }
        entries.insert(
            id,
            Entry {
                config,
                created_at: Instant::now(),
                state: State::Created,
            },
        );
        Ok(())
    }

    /// Moves a created exec to running; a second start gets `AlreadyStarted`.
    pub fn claim(&self, id: &str) -> Result<Claimed, DockerError> {
        let mut entries = self.lock();
        sweep(&mut entries, Instant::now());
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| DockerError::NoSuchExec(id.to_string()))?;
        if !matches!(entry.state, State::Created) {
            return Err(DockerError::AlreadyStarted(id.to_string()));
        }
        let (resize, resizes) = watch::channel(None);
        entry.state = State::Running { resize };
        Ok(Claimed {
            config: entry.config.clone(),
            resizes,
        })
    }

    /// Records the end of an exec. Called before its stream is closed, so a
    /// client that inspects right after EOF reads the exit code.
    pub fn finish(&self, id: &str, exit_code: Option<i32>) {
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
    pub fn resize(&self, id: &str, size: Size) -> Result<(), DockerError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| DockerError::NoSuchExec(id.to_string()))?;
        match &entry.state {
            State::Created => entry.config.size = Some(size),
            State::Running { resize } => {
                resize.send_replace(Some(size));
            }
            // A client racing a process that just exited (`docker exec -it
            // c true`) must not get an error for its first resize.
            State::Finished { .. } => {}
        }
        Ok(())
    }

    pub fn inspect(&self, id: &str) -> Result<Inspect, DockerError> {
        let mut entries = self.lock();
        sweep(&mut entries, Instant::now());
        let entry = entries
            .get(id)
            .ok_or_else(|| DockerError::NoSuchExec(id.to_string()))?;
        let (running, exit_code) = match entry.state {
            State::Created => (false, None),
            State::Running { .. } => (true, None),
            State::Finished { exit_code, .. } => (false, exit_code),
        };
        Ok(Inspect {
            config: entry.config.clone(),
            running,
            exit_code,
        })
    }
}

/// Drops created execs nobody started and finished ones past their TTL.
fn sweep(entries: &mut HashMap<String, Entry>, now: Instant) {
    entries.retain(|_, e| match e.state {
        State::Created => now.duration_since(e.created_at) < CREATED_TTL,
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
        t.create("a".into(), config()).unwrap();
        t.resize("a", (30, 100)).unwrap();
        let claimed = t.claim("a").unwrap();
        assert_eq!(claimed.config.size, Some((30, 100)));
        assert!(matches!(t.claim("a"), Err(DockerError::AlreadyStarted(_))));
        assert!(t.inspect("a").unwrap().running);
        t.resize("a", (10, 20)).unwrap();
        assert_eq!(*claimed.resizes.borrow(), Some((10, 20)));
        t.finish("a", Some(3));
        let i = t.inspect("a").unwrap();
        assert!(!i.running);
        assert_eq!(i.exit_code, Some(3));
        assert!(matches!(t.claim("b"), Err(DockerError::NoSuchExec(_))));
    }

    #[test]
    fn bounded() {
        let t = ExecTable::default();
        for i in 0..MAX_CREATED {
            t.create(format!("c{i}"), config()).unwrap();
        }
        assert!(matches!(
            t.create("x".into(), config()),
            Err(DockerError::TooManyCreated(_))
        ));
        for i in 0..MAX_CREATED {
            t.claim(&format!("c{i}")).unwrap();
            t.finish(&format!("c{i}"), Some(0));
        }
        assert_eq!(t.lock().len(), MAX_CREATED);
    }

    #[test]
    fn expiry() {
        let mut entries = HashMap::new();
        let old = Instant::now() - CREATED_TTL - Duration::from_secs(1);
        entries.insert(
            "old".to_string(),
            Entry {
                config: config(),
                created_at: old,
                state: State::Created,
            },
        );
        entries.insert(
            "done".to_string(),
            Entry {
                config: config(),
                created_at: old,
                state: State::Finished {
                    exit_code: Some(0),
                    at: Instant::now(),
                },
            },
        );
        sweep(&mut entries, Instant::now());
        assert!(!entries.contains_key("old"));
        assert!(entries.contains_key("done"));
    }
}
