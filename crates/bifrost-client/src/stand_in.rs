//! A stand-in server for the client's unit tests: it records each request and answers every
//! one with the same status and JSON, so a test checks what the client sent and how it reads
//! the answer.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Client;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Option<Value>,
}

/// Answers every request with `status` and `answer` (JSON), recording each.
pub(crate) async fn stand_in(status: u16, answer: Value) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let (request, body) = read_request(&mut socket).await;
            let mut lines = request.lines();
            let mut first = lines.next().unwrap().split(' ');
            let method = first.next().unwrap().to_owned();
            let target = first.next().unwrap().to_owned();
            let content_type = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned());
            let body = (!body.is_empty()).then(|| serde_json::from_slice(&body).unwrap());
            log.lock().unwrap().push(Seen { method, target, content_type, body });
            let payload = if status == 204 { String::new() } else { answer.to_string() };
            let kind = if status >= 400 { "application/problem+json" } else { "application/json" };
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
                payload.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            let _ = socket.shutdown().await;
        }
    });
    (Client::new(&format!("http://{addr}")).unwrap(), seen)
}

/// The head (request line and headers) and the body of one request.
async fn read_request(socket: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            while buffer.len() < end + 4 + length {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the request ended early");
                buffer.extend_from_slice(&chunk[..n]);
            }
            return (head, buffer[end + 4..end + 4 + length].to_vec());
        }
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the request ended early");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

pub(crate) fn last(seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    seen.lock().unwrap().last().cloned().unwrap()
}
