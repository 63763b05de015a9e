//! The container picker's list: running containers with name, image and
//! status, from the Engine API socket when execd talks to a local Docker
//! engine, else from `<runtime cli> ps --format '{{json .}}'`.

use std::time::Duration;

use execd_session::{ExecMode, SessionManager};
use serde::Serialize;
use serde_json::Value;

use super::WebError;

/// How long the engine gets to answer; the page shows the failure after.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most containers listed: the picker is for people, not inventories.
const MAX_LISTED: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub status: String,
}

/// The running containers, sorted by name.
pub async fn list(manager: &SessionManager) -> Result<Vec<Container>, WebError> {
    let runtime_cli = match manager.mode() {
        ExecMode::Container { runtime_cli } => runtime_cli.clone(),
        ExecMode::Host => return Err(WebError::HostMode),
    };
    let socket = manager.engine_api_socket().map(|s| s.to_path_buf());
    let ask = async {
        match socket {
            Some(socket) => from_engine_api(&socket).await,
            None => from_cli(&runtime_cli).await,
        }
    };
    let mut list = tokio::time::timeout(LIST_TIMEOUT, ask)
        .await
        .map_err(|_| WebError::Engine("the container engine did not answer in time".into()))??;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list.truncate(MAX_LISTED);
    Ok(list)
}

async fn from_engine_api(socket: &std::path::Path) -> Result<Vec<Container>, WebError> {
    let (code, body) = execd_session::engine_api_get(socket, "/containers/json")
        .await
        .map_err(|e| WebError::Engine(format!("asking the engine for containers: {e}")))?;
    if code != 200 {
        return Err(WebError::Engine(format!(
            "the engine answered {code} to the container list"
        )));
    }
    let items: Vec<Value> = serde_json::from_str(&body)
        .map_err(|e| WebError::Engine(format!("unreadable container list: {e}")))?;
    Ok(items.iter().map(engine_item).collect())
}

/// One `GET /containers/json` item; names come with a leading slash.
fn engine_item(item: &Value) -> Container {
    let name = item["Names"]
        .as_array()
        .and_then(|n| n.first())
        .and_then(Value::as_str)
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| short_id(item["Id"].as_str().unwrap_or_default()));
    Container {
        name,
        image: text(&item["Image"]),
        status: text(&item["Status"]),
    }
}

async fn from_cli(runtime_cli: &str) -> Result<Vec<Container>, WebError> {
    let out = tokio::process::Command::new(runtime_cli)
        .args(["ps", "--no-trunc", "--format", "{{json .}}"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| WebError::Engine(format!("running {runtime_cli} ps: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(WebError::Engine(format!(
            "{runtime_cli} ps: {}",
            stderr.trim()
        )));
    }
    Ok(parse_cli_lines(&String::from_utf8_lossy(&out.stdout)))
}

/// `docker ps --format '{{json .}}'` prints one object per line; Names is
/// comma-separated there.
fn parse_cli_lines(output: &str) -> Vec<Container> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|item| Container {
            name: text(&item["Names"])
                .split(',')
                .next()
                .unwrap_or_default()
                .to_string(),
            image: text(&item["Image"]),
            status: text(&item["Status"]),
        })
        .filter(|c| !c.name.is_empty())
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_cli_shapes() {
        let item = serde_json::json!({
            "Id": "0123456789abcdef", "Names": ["/web-1"], "Image": "busybox",
            "Status": "Up 2 minutes", "State": "running"
        });
        assert_eq!(
            engine_item(&item),
            Container {
                name: "web-1".into(),
                image: "busybox".into(),
                status: "Up 2 minutes".into()
            }
        );
        let unnamed = serde_json::json!({"Id": "0123456789abcdef"});
        assert_eq!(engine_item(&unnamed).name, "0123456789ab");
        let lines = "{\"Names\":\"a,b/link\",\"Image\":\"i\",\"Status\":\"Up\"}\nnot json\n";
        let list = parse_cli_lines(lines);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "a");
    }
}
