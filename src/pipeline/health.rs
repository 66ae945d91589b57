//! `/healthz` and `/readyz` for `keywatch run`, on `kafka.health_listen`:
//! a liveness probe (every stage's loop turned lately) and a readiness probe
//! (every stage holds its assignment with state restored, an empty one
//! included). A few lines of HTTP/1.0 over tokio: the probes are GETs from
//! an orchestrator, and a web framework would be most of the binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::stage::Progress;

/// Longest request head read; probes send a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 4096;

/// A client that sends nothing is dropped after this long.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the probes judge.
#[derive(Clone)]
pub struct HealthState {
    pub progress: Arc<Progress>,
    /// The stages this process runs; each must be ready.
    pub stages: Vec<&'static str>,
    /// A stage whose loop has not turned for this long is stuck.
    pub stale_after: Duration,
}

/// One answer: status code and a one-line body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl HealthState {
    /// The answer to a GET of `path`.
    pub fn answer(&self, path: &str) -> Answer {
        match path {
            "/healthz" => {
                let stalled = self.progress.stalled_stages(self.stale_after);
                if stalled.is_empty() {
                    Answer::ok("ok")
                } else {
                    Answer::unavailable(format!("stalled: {}", stalled.join(",")))
                }
            }
            "/readyz" => {
                let unready = self.progress.unready_stages(&self.stages);
                if unready.is_empty() {
                    Answer::ok("ready")
                } else {
                    Answer::unavailable(format!("not ready: {}", unready.join(",")))
                }
            }
            _ => Answer {
                status: 404,
                body: "not found".into(),
            },
        }
    }
}

impl Answer {
    fn ok(body: &str) -> Answer {
        Answer {
            status: 200,
            body: body.to_string(),
        }
    }

    fn unavailable(body: String) -> Answer {
        Answer { status: 503, body }
    }

    fn to_http(&self) -> String {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        format!(
            "HTTP/1.0 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}\n",
            self.status,
            self.body.len() + 1,
            self.body
        )
    }
}

/// Binds `listen`; the caller spawns [`serve`] with the listener, so a port
/// in use fails at start.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Answers probes until `cancel` fires, one task per connection.
pub async fn serve(listener: TcpListener, state: HealthState, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer_connection(stream, &state).await {
                        tracing::debug!(%error, "health probe connection failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot accept a health probe");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer_connection(mut stream: TcpStream, state: &HealthState) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    // Only the request line matters: read until it is complete.
    while !head.contains(&b'\n') && head.len() < MAX_REQUEST_BYTES {
        let read = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = head.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let answer = match (parts.next(), parts.next()) {
        (Some("GET" | "HEAD"), Some(path)) => state.answer(path.split('?').next().unwrap_or(path)),
        _ => Answer {
            status: 405,
            body: "only GET".into(),
        },
    };
    stream.write_all(answer.to_http().as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn probes_answer_over_plain_tcp_and_follow_the_stages() {
        let progress = Arc::new(Progress::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let state = HealthState {
            progress: Arc::clone(&progress),
            stages: vec!["keyed", "by_source"],
            stale_after: Duration::from_millis(300),
        };
        let server = tokio::spawn(serve(listener, state, cancel.clone()));

        let not_ready = get(address, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.0 503"), "{not_ready}");
        assert!(not_ready.contains("keyed,by_source"), "{not_ready}");
        progress.tick("keyed");
        progress.set_ready("keyed", true);
        progress.set_ready("by_source", true);
        let ready = get(address, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.0 200"));
        assert!(get(address, "/nothing").await.starts_with("HTTP/1.0 404"));

        // No tick for longer than stale_after: the loop is stuck.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let stuck = get(address, "/healthz").await;
        assert!(stuck.starts_with("HTTP/1.0 503"), "{stuck}");
        assert!(stuck.contains("stalled"), "{stuck}");
        progress.tick("keyed");
        progress.tick("by_source");
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.0 200"));

        cancel.cancel();
        server.await.unwrap();
    }
}
