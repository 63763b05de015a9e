//! The shipped deployment files read as a launcher would: for each
//! (systemd unit, Dockerfile, DaemonSet) the program, arguments,
//! environment and setup steps it starts execd with ([`Shipped`]).

use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

pub fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How one deployment file launches execd, as written in it.
#[derive(Debug, Default)]
pub struct Shipped {
    pub file: &'static str,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Directories the platform creates before execd starts, with the mode
    /// it creates them with.
    pub dirs: Vec<(String, u32)>,
    /// Commands that run before execd (init containers).
    pub setup: Vec<Vec<String>>,
}

/// `K=V` words; the test splits on whitespace, so quoting would be misread
/// and is refused.
pub fn assignments(file: &str, words: &str) -> Vec<(String, String)> {
    assert!(!words.contains(['"', '\'']), "{file}: quoted value {words}");
    words
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: not K=V: {kv}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub fn systemd_unit() -> Shipped {
    let file = "execd.service";
    let unit = deploy_file(file);
    let mut shipped = Shipped {
        file,
        ..Default::default()
    };
    let mut runtime_dir = None;
    let mut runtime_mode = 0o755; // systemd's default RuntimeDirectoryMode
    for line in unit.lines() {
        if let Some(cmd) = line.strip_prefix("ExecStart=") {
            assert!(!cmd.contains(['"', '\'', '\\']), "{file}: quoting in {cmd}");
            let mut words = cmd.split_whitespace().map(String::from);
            shipped.program = words.next().unwrap();
            shipped.args = words.collect();
        } else if let Some(words) = line.strip_prefix("Environment=") {
            shipped.env.extend(assignments(file, words));
        } else if let Some(dir) = line.strip_prefix("RuntimeDirectory=") {
            runtime_dir = Some(format!("/run/{dir}"));
        } else if let Some(mode) = line.strip_prefix("RuntimeDirectoryMode=") {
            runtime_mode = u32::from_str_radix(mode, 8).unwrap();
        }
    }
    if let Some(dir) = runtime_dir {
        shipped.dirs.push((dir, runtime_mode));
    }
    shipped
}

pub fn dockerfile() -> Shipped {
    let file = "Dockerfile";
    let text = deploy_file(file);
    let mut shipped = Shipped {
        file,
        ..Default::default()
    };
    let mut entrypoint: Vec<String> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(json) = line.strip_prefix("ENTRYPOINT ") {
            entrypoint = serde_json::from_str(json).expect("ENTRYPOINT in exec form");
        } else if let Some(json) = line.strip_prefix("CMD ") {
            cmd = serde_json::from_str(json).expect("CMD in exec form");
        } else if let Some(words) = line.strip_prefix("ENV ") {
            shipped.env.extend(assignments(file, words));
        }
    }
    // Directories the image build makes with `install -d -m MODE DIR`.
    let words: Vec<&str> = text.split_whitespace().collect();
    for w in words.windows(5) {
        if w[..3] == ["install", "-d", "-m"] {
            shipped
                .dirs
                .push((w[4].to_string(), u32::from_str_radix(w[3], 8).unwrap()));
        }
    }
    let mut command = entrypoint.into_iter().chain(cmd);
    shipped.program = command.next().expect("ENTRYPOINT");
    shipped.args = command.collect();
    shipped
}

pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// The DaemonSet's pod spec, after checking the file's documents.
pub fn daemonset_pod() -> Value {
    let text = deploy_file("kubernetes/daemonset.yaml");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet", "Service"]);
    docs[1]["spec"]["template"]["spec"].clone()
}

pub fn daemonset() -> Shipped {
    let file = "daemonset.yaml";
    let pod = daemonset_pod();
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "one execd container");
    let container = &containers[0];
    // No `command`: the image's ENTRYPOINT (execd) runs with these args.
    assert!(container["command"].is_null());
    let mut shipped = Shipped {
        file,
        program: "execd".into(),
        args: strings(&container["args"]),
        ..Default::default()
    };
    for env in container["env"].as_sequence().into_iter().flatten() {
        let value = env["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: env needs a literal string value: {env:?}"));
        shipped
            .env
            .push((env["name"].as_str().unwrap().to_string(), value.to_string()));
    }
    // kubelet creates a missing DirectoryOrCreate hostPath with mode 0755;
    // what narrows it must be in the manifest.
    for volume in pod["volumes"].as_sequence().into_iter().flatten() {
        let host_path = &volume["hostPath"];
        if host_path["type"].as_str() == Some("DirectoryOrCreate") {
            let mount = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|m| m["name"] == volume["name"])
                .expect("the hostPath directory is mounted");
            // The test maps one path for host and container, so they must
            // be the same for node-local clients to find the socket.
            assert_eq!(mount["mountPath"], host_path["path"]);
            shipped
                .dirs
                .push((host_path["path"].as_str().unwrap().to_string(), 0o755));
        }
    }
    for init in pod["initContainers"].as_sequence().into_iter().flatten() {
        let mut command = strings(&init["command"]);
        command.extend(strings(&init["args"]));
        shipped.setup.push(command);
    }
    shipped
}
