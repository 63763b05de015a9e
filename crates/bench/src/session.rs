//! The bench's side of one ExecStream: open it with a start request and
//! read it as a sequence of [`Event`]s.

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use execd_client::message;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::system::CONTAINER;

/// The terminal size of every tty session, through execd and directly.
pub const ROWS: u16 = 50;
pub const COLS: u16 = 200;

pub struct Session {
    pub tx: mpsc::Sender<ExecMessage>,
    pub rx: Streaming<ExecMessage>,
}

/// Opens a session running `command` in the bench container.
pub async fn open(channel: &Channel, command: &[&str], tty: bool) -> Result<Session> {
    open_in(channel, CONTAINER, command, tty).await
}

/// Opens a session running `command` in `container`.
pub async fn open_in(
    channel: &Channel,
    container: &str,
    command: &[&str],
    tty: bool,
) -> Result<Session> {
    // Large enough for any output message execd sends (256 KiB).
    let mut client = ExecServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    let request = ExecStartRequest {
        tty,
        rows: i32::from(ROWS),
        cols: i32::from(COLS),
        ..message::request(container, command)
    };
    tx.send(message::start("", request)).await?;
    let rx = client
        .exec_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Session { tx, rx })
}

/// Comes back to the detached session `id` (execd with --reattach-grace).
pub async fn reopen(channel: &Channel, id: &str) -> Result<Session> {
    let mut client = ExecServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    tx.send(message::start(id, message::request(CONTAINER, &["true"])))
        .await?;
    let rx = client
        .exec_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Session { tx, rx })
}

/// What the bench cares about in the server's messages.
pub enum Event {
    Started,
    Output(Bytes),
    Exited(i32),
}

/// The next event; an ERROR status or the end of the stream is an error.
pub async fn next_event(rx: &mut Streaming<ExecMessage>) -> Result<Event> {
    loop {
        let msg = rx.message().await?.ok_or_else(|| anyhow!("stream ended"))?;
        match msg.payload {
            Some(Payload::OutputData(o)) => return Ok(Event::Output(o.data)),
            Some(Payload::Status(s)) => match WireStatus::try_from(s.status) {
                Ok(WireStatus::Started | WireStatus::Running) => return Ok(Event::Started),
                Ok(WireStatus::Exited) => return Ok(Event::Exited(s.exit_code)),
                Ok(WireStatus::Error) => bail!("session error: {}", s.error_message),
                _ => {}
            },
            _ => {}
        }
    }
}
