//! The exec'd process's OCI spec, built the way `docker exec` builds it.
//!
//! It starts from the container's own `process` (its bundle's
//! `config.json`): capabilities, AppArmor profile, `noNewPrivileges`,
//! rlimits, SELinux label, OOM score and the container's environment stay
//! exactly as the container has them. On top come what an exec chooses:
//! argv, the client's variables and the session marker, the working
//! directory, the terminal and, for `-u`, a user resolved the way the
//! engine does (libcontainer's `GetExecUser`) in the container's own
//! `/etc/passwd` and `/etc/group`, plus the container's `--group-add`.
//!
//! The container's files are read through `openat2(RESOLVE_IN_ROOT)` on
//! the container's root (`/proc/<init>/root`): every symlink in them
//! resolves inside the container, so an image whose `/etc/passwd` links to
//! a host path never makes execd read the host's file.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde_json::{json, Value};

use crate::command::{TermSize, SESSION_ENV};

/// Largest `/etc/passwd` or `/etc/group` read from a container.
const MAX_ACCOUNT_FILE: u64 = 4 * 1024 * 1024;

/// The highest uid or gid libcontainer accepts.
const MAX_ID: u64 = 2_147_483_647;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the container's config.json has no process object")]
    NoProcess,
    /// The engine's own wording, so clients see what `docker exec` says.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("uids and gids must be in range 0-{MAX_ID}")]
    IdRange,
    #[error("reading the container's /{path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A resolved exec user, as the spec's `process.user` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// What an exec sets on top of the container's process.
pub struct Overrides<'a> {
    pub argv: Vec<String>,
    /// The client's variables.
    pub env: &'a BTreeMap<String, String>,
    /// The session's marker value.
    pub marker: &'a str,
    /// Empty: the container's own.
    pub cwd: &'a str,
    /// `None`: the container's own user.
    pub user: Option<User>,
    pub tty: bool,
    pub size: TermSize,
    /// Whether the container's configured environment (the engine's
    /// `Config.Env`) names `TERM`; `None` if no engine said.
    pub configured_term: Option<bool>,
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// The engine's `ReplaceOrAppendEnvValues` for one variable.
fn replace_or_append(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

/// The exec's `process` object from the container's `process`.
pub fn exec_process(container: &Value, o: &Overrides<'_>) -> Result<Value, SpecError> {
    let mut process = container.clone();
    let Some(fields) = process.as_object_mut() else {
        return Err(SpecError::NoProcess);
    };
    let mut env: Vec<String> = fields
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let container_tty = fields
        .get("terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // The engine gives a tty container TERM=xterm in its own environment,
    // and an exec TERM=xterm only when the exec has a tty: a pipe exec
    // into a tty container does not inherit it, unless it was configured.
    if !o.tty && container_tty && o.configured_term == Some(false) {
        env.retain(|e| env_key(e) != "TERM");
    }
    if o.tty && !env.iter().any(|e| env_key(e) == "TERM") && !o.env.contains_key("TERM") {
        env.push("TERM=xterm".to_string());
    }
    for (key, value) in o.env {
        replace_or_append(&mut env, key, value);
    }
    replace_or_append(&mut env, SESSION_ENV, o.marker);
    fields.insert("args".into(), json!(o.argv));
    fields.insert("env".into(), json!(env));
    fields.insert("terminal".into(), json!(o.tty));
    if !o.cwd.is_empty() {
        fields.insert("cwd".into(), json!(o.cwd));
    } else if fields
        .get("cwd")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        fields.insert("cwd".into(), json!("/"));
    }
    if let Some(user) = &o.user {
        // Replaced whole, as the engine does: no umask or username carried
        // over from the container's user.
        fields.insert(
            "user".into(),
            json!({
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": user.additional_gids,
            }),
        );
    }
    if o.tty {
        fields.insert(
            "consoleSize".into(),
            json!({"height": o.size.rows, "width": o.size.cols}),
        );
    } else {
        fields.remove("consoleSize");
    }
    Ok(process)
}

/// One `/etc/passwd` entry.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u64,
    gid: u64,
}

/// One `/etc/group` entry.
struct GroupEntry<'a> {
    name: &'a str,
    gid: u64,
    members: Vec<&'a str>,
}

/// libcontainer reads a field that is not a number as 0; so does this.
fn id_field(field: Option<&str>) -> u64 {
    field.and_then(|f| f.trim().parse().ok()).unwrap_or(0)
}

/// The lines of `/etc/passwd` or `/etc/group` (`name:password:…`, blank
/// lines skipped): each one's name and the fields after its password.
fn colon_records(text: &str) -> impl Iterator<Item = (&str, std::str::Split<'_, char>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.split(':');
            let name = f.next().unwrap_or_default();
            let _password = f.next();
            (name, f)
        })
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    colon_records(text).map(|(name, mut f)| PasswdEntry {
        name,
        uid: id_field(f.next()),
        gid: id_field(f.next()),
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    colon_records(text).map(|(name, mut f)| {
        let gid = id_field(f.next());
        let members = f
            .next()
            .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
            .unwrap_or_default();
        GroupEntry { name, gid, members }
    })
}

fn checked(id: u64) -> Result<u32, SpecError> {
    if id > MAX_ID {
        return Err(SpecError::IdRange);
    }
    u32::try_from(id).map_err(|_| SpecError::IdRange)
}

/// Resolves `user[:group]` (names or numeric ids) like the engine's
/// `docker exec -u`: the user's passwd entry, or a bare numeric uid; an
/// explicit group, or else every group listing the user; then the
/// primary group first and the container's `group_add` last.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
    group_add: &[String],
) -> Result<User, SpecError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let numeric_uid = user_arg.parse::<u64>().ok();
    let numeric_gid = group_arg.parse::<u64>().ok();
    let matched = passwd.and_then(|text| {
        passwd_entries(text).find(|e| match numeric_uid {
            Some(uid) => e.uid == uid,
            None => e.name == user_arg,
        })
    });
    let (uid, mut gid, name) = match (&matched, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, e.name),
        (None, Some(uid)) => (uid, 0, ""),
        (None, None) => return Err(SpecError::UnknownUser(user_arg.to_string())),
    };
    let mut sgids = Vec::new();
    if !group_arg.is_empty() {
        let found = group.and_then(|text| {
            group_entries(text).find(|g| match numeric_gid {
                Some(gid) => g.gid == gid,
                None => g.name == group_arg,
            })
        });
        gid = match (found, numeric_gid) {
            (Some(g), _) => g.gid,
            (None, Some(n)) => n,
            (None, None) => return Err(SpecError::UnknownGroup(group_arg.to_string())),
        };
    } else if !name.is_empty() {
        if let Some(text) = group {
            sgids = group_entries(text)
                .filter(|g| g.members.contains(&name))
                .map(|g| g.gid)
                .collect();
        }
    }
    let mut additional = vec![checked(gid)?];
    for g in sgids {
        additional.push(checked(g)?);
    }
    let mut added: Vec<u32> = Vec::new();
    for wanted in group_add {
        let numeric = wanted.parse::<u64>().ok();
        let found = group.and_then(|text| {
            group_entries(text)
                .find(|g| g.name == wanted || numeric == Some(g.gid))
                .map(|g| g.gid)
        });
        let id = match (found, numeric) {
            (Some(id), _) | (None, Some(id)) => checked(id)?,
            (None, None) => return Err(SpecError::UnknownGroup(wanted.clone())),
        };
        if !added.contains(&id) {
            added.push(id);
        }
    }
    additional.extend(added);
    Ok(User {
        uid: checked(uid)?,
        gid: checked(gid)?,
        additional_gids: additional,
    })
}

/// Reads `path` (relative, e.g. `etc/passwd`) inside the root directory of
/// process `pid`, every symlink resolved inside that root; `None` if it
/// does not exist. Blocking.
pub fn read_container_file(pid: i32, path: &'static str) -> Result<Option<String>, SpecError> {
    let root = std::fs::File::open(format!("/proc/{pid}/root"))
        .map_err(|source| SpecError::Read { path, source })?;
    read_in_root(&root, path).map_err(|source| SpecError::Read { path, source })
}

/// [`read_container_file`] below an open directory.
fn read_in_root(root: &std::fs::File, path: &str) -> std::io::Result<Option<String>> {
    let c_path = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: open_how is plain old data; all-zero is its "nothing set".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and the open_how struct
    // (of the size passed) and returns a new fd or -1; both live across the
    // call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    // A FIFO or device planted there must not block or feed execd forever.
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_ACCOUNT_FILE).read_to_string(&mut text)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000:app:/home/app:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nnogroup:x:65534:\n";

    fn user(spec: &str) -> Result<User, SpecError> {
        resolve_user(spec, Some(PASSWD), Some(GROUP), &[])
    }

    #[test]
    fn users_resolve_like_docker_exec_u() {
        let u = user("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 10], "primary, then member-of");
        let u = user("1000").unwrap();
        assert_eq!(u.additional_gids, vec![1000, 10]);
        // An explicit group replaces the primary one and drops the others.
        let u = user("app:nogroup").unwrap();
        assert_eq!((u.gid, u.additional_gids.clone()), (65534, vec![65534]));
        // Numeric ids need no entry.
        let u = user("4242:4343").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (4242, 4343, vec![4343]));
        let u = user("4242").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        assert!(matches!(user("nosuch"), Err(SpecError::UnknownUser(_))));
        assert!(matches!(
            user("app:nosuch"),
            Err(SpecError::UnknownGroup(_))
        ));
        assert_eq!(
            user("nosuch").unwrap_err().to_string(),
            "unable to find user nosuch: no matching entries in passwd file"
        );
        // Without the files only numeric ids work.
        assert!(resolve_user("app", None, None, &[]).is_err());
        assert_eq!(resolve_user("7:8", None, None, &[]).unwrap().gid, 8);
        assert!(matches!(user("99999999999"), Err(SpecError::IdRange)));
    }

    #[test]
    fn group_add_comes_last_once_each() {
        let adds = ["wheel".to_string(), "10".to_string(), "777".to_string()];
        let u = resolve_user("root", Some(PASSWD), Some(GROUP), &adds).unwrap();
        assert_eq!(u.additional_gids, vec![0, 10, 777]);
        let bad = ["nosuch".to_string()];
        assert!(resolve_user("root", Some(PASSWD), Some(GROUP), &bad).is_err());
    }

    fn base() -> Value {
        json!({
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            "args": ["/sbin/docker-init", "--", "sleep", "infinity"],
            "env": ["PATH=/bin", "HOSTNAME=abc", "TERM=xterm", "A=container"],
            "cwd": "/srv",
            "terminal": true,
            "capabilities": {"bounding": ["CAP_KILL"]},
            "noNewPrivileges": true,
            "apparmorProfile": "docker-default",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        })
    }

    #[test]
    fn the_container_process_is_kept_and_the_exec_fields_replaced() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "client".to_string());
        env.insert("B".to_string(), "2".to_string());
        let o = Overrides {
            argv: vec!["id".into()],
            env: &env,
            marker: "m1",
            cwd: "",
            user: Some(User {
                uid: 5,
                gid: 6,
                additional_gids: vec![6],
            }),
            tty: false,
            size: TermSize::default(),
            configured_term: Some(false),
        };
        let p = exec_process(&base(), &o).unwrap();
        assert_eq!(p["args"], json!(["id"]));
        assert_eq!(
            p["env"],
            json!([
                "PATH=/bin",
                "HOSTNAME=abc",
                "A=client",
                "B=2",
                "EXECD_SESSION_ID=m1"
            ])
        );
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["terminal"], false);
        assert_eq!(
            p["user"],
            json!({"uid": 5, "gid": 6, "additionalGids": [6]})
        );
        for kept in [
            "capabilities",
            "noNewPrivileges",
            "apparmorProfile",
            "rlimits",
        ] {
            assert_eq!(p[kept], base()[kept], "{kept}");
        }
        assert!(p.get("consoleSize").is_none());
    }

    #[test]
    fn term_is_xterm_only_with_a_tty_and_only_when_unset() {
        let env = BTreeMap::new();
        let mut o = Overrides {
            argv: vec!["sh".into()],
            env: &env,
            marker: "m",
            cwd: "/tmp",
            user: None,
            tty: true,
            size: TermSize { rows: 5, cols: 7 },
            configured_term: None,
        };
        let mut plain = base();
        plain["env"] = json!(["PATH=/bin"]);
        plain["terminal"] = json!(false);
        let p = exec_process(&plain, &o).unwrap();
        assert_eq!(
            p["env"],
            json!(["PATH=/bin", "TERM=xterm", "EXECD_SESSION_ID=m"])
        );
        assert_eq!(p["consoleSize"], json!({"height": 5, "width": 7}));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"], base()["user"]);
        let mut own = BTreeMap::new();
        own.insert("TERM".to_string(), "vt100".to_string());
        o.env = &own;
        let p = exec_process(&plain, &o).unwrap();
        assert_eq!(
            p["env"],
            json!(["PATH=/bin", "TERM=vt100", "EXECD_SESSION_ID=m"])
        );
        // A configured TERM stays, even for a pipe exec.
        o.env = &env;
        o.tty = false;
        o.configured_term = Some(true);
        let p = exec_process(&base(), &o).unwrap();
        assert!(p["env"].as_array().unwrap().contains(&json!("TERM=xterm")));
        assert!(exec_process(&json!([]), &o).is_err());
    }

    /// Symlinks in the container's files, absolute or climbing, end
    /// inside its root, never on the host's files of the same name.
    #[test]
    fn container_files_resolve_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("hostname"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/hostname", etc.join("group")).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", etc.join("shadow")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let read = |p| read_in_root(&root, p);
        assert_eq!(read("etc/passwd").unwrap().as_deref(), Some("inside\n"));
        assert_eq!(read("etc/group").unwrap().as_deref(), Some("inside\n"));
        assert!(read("etc/shadow").unwrap().is_none(), "no /proc inside");
        assert!(read("etc/nothing").unwrap().is_none());
        assert!(read("etc").is_err(), "a directory is not a file");
        let me = std::process::id() as i32;
        assert!(read_container_file(me, "no/such/execd-file")
            .unwrap()
            .is_none());
    }
}
