//! The NATS JetStream publisher against a real server (2.9+, JetStream on).
//! `BIFROST_TEST_NATS_URL`, default `nats://127.0.0.1:4222`; skipped when unreachable unless
//! `BIFROST_REQUIRE_SERVICES=1`. Each test makes its own stream over its own subjects
//! (`test-<uuid>.>`) and deletes it afterwards, also when the test fails.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bifrost_api::BridgeContentModeBody;
use bifrost_bridges::kinds::nats::NatsPublisher;
use bifrost_bridges::message::outgoing;
use bifrost_bridges::{Outgoing, PublishError, Publisher, Target};
use bifrost_core::{EventType, RecordedEvent, StreamName, Timestamp};
use bytes::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

fn url() -> String {
    std::env::var("BIFROST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// What a test gets: a publisher, an admin client, and its stream capturing `{prefix}.>`.
struct Ctx {
    publisher: NatsPublisher,
    admin: async_nats::Client,
    stream: String,
    prefix: String,
}

/// Runs `test` against a fresh stream, deleting the stream afterwards whatever happens.
async fn with_stream<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin = match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url())
        .await
    {
        Ok(client) => client,
        Err(e) => {
            bifrost_core::testkit::service_unavailable::<()>("NATS", e);
            return;
        }
    };
    let publisher = NatsPublisher::connect(&url()).await.expect("the publisher connects where the admin did");
    let name = format!("test-{}", Uuid::new_v4().simple());
    let config = json!({
        "name": name,
        "subjects": [format!("{name}.>")],
        "storage": "memory",
        "duplicate_window": 120_000_000_000_u64,
        // A safety net should a run be killed before it deletes its stream.
        "max_age": 600_000_000_000_u64,
    });
    let created = api(&admin, &format!("STREAM.CREATE.{name}"), config).await;
    assert!(created.get("error").is_none(), "create stream (is JetStream on?): {created}");

    let ctx = Ctx { publisher, admin: admin.clone(), stream: name.clone(), prefix: name.clone() };
    // A panic inside a task comes back as an error, so the stream is deleted either way.
    let outcome = tokio::spawn(test(ctx)).await;
    let deleted = api(&admin, &format!("STREAM.DELETE.{name}"), json!({})).await;
    assert_eq!(deleted["success"], true, "delete stream: {deleted}");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A JetStream API call (`$JS.API.<what>`) over a plain request.
async fn api(client: &async_nats::Client, what: &str, body: Value) -> Value {
    let reply = client
        .request(format!("$JS.API.{what}"), Bytes::from(body.to_string()))
        .await
        .unwrap_or_else(|e| panic!("$JS.API.{what}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn message_count(ctx: &Ctx) -> u64 {
    let info = api(&ctx.admin, &format!("STREAM.INFO.{}", ctx.stream), json!({})).await;
    info["state"]["messages"].as_u64().unwrap_or_else(|| panic!("stream info: {info}"))
}

/// A message as the stream stored it.
#[derive(Debug)]
struct Stored {
    subject: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Stored {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

async fn stored(ctx: &Ctx, seq: u64) -> Stored {
    let got = api(&ctx.admin, &format!("STREAM.MSG.GET.{}", ctx.stream), json!({ "seq": seq })).await;
    let message = &got["message"];
    let b64 = |field: &str| {
        message[field]
            .as_str()
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s).unwrap())
            .unwrap_or_default()
    };
    let raw_headers = String::from_utf8(b64("hdrs")).unwrap();
    // `NATS/1.0\r\nName: value\r\n...\r\n\r\n`
    let headers = raw_headers
        .split("\r\n")
        .skip(1)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("header line {line:?}"));
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    Stored {
        subject: message["subject"].as_str().unwrap_or_else(|| panic!("message {seq}: {got}")).to_owned(),
        headers,
        body: b64("data"),
    }
}

fn event(n: u64, metadata: &str) -> RecordedEvent {
    RecordedEvent {
        id: Uuid::now_v7(),
        stream: StreamName::new(&format!("order-{n}")).unwrap(),
        aggregate_type: "order".into(),
        event_type: EventType::new("order.submitted").unwrap(),
        schema_version: 1,
        version: 1,
        position: n,
        data: Bytes::from(format!(r#"{{"total": {n}.5}}"#)),
        metadata: Bytes::from(metadata.to_owned()),
        occurred_at: Timestamp::from_micros(1_764_000_000_000_000),
        recorded_at: Timestamp::from_micros(1_764_000_000_000_100),
    }
}

/// `count` messages to `{prefix}.{type}.{stream}`, positions `first..`.
fn batch(prefix: &str, first: u64, count: u64, mode: BridgeContentModeBody) -> Vec<Outgoing> {
    let target = Target::parse(&format!("{prefix}.{{type}}.{{stream}}")).unwrap();
    (first..first + count).map(|n| outgoing(&event(n, "{}"), &target, mode).unwrap()).collect()
}

#[tokio::test]
async fn a_batch_arrives_in_order_with_subjects_bodies_and_dedupe_ids() {
    with_stream(|ctx| async move {
        let sent = batch(&ctx.prefix, 1, 20, BridgeContentModeBody::Bifrost);
        ctx.publisher.publish(&sent).await.unwrap();

        assert_eq!(message_count(&ctx).await, 20);
        for (seq, msg) in (1..).zip(&sent) {
            let got = stored(&ctx, seq).await;
            assert_eq!(got.subject, format!("{}.order.submitted.order-{seq}", ctx.prefix));
            assert_eq!(got.body, msg.body.to_vec(), "body of message {seq}");
            let body: Value = serde_json::from_slice(&got.body).unwrap();
            assert_eq!(
                (body["position"].as_u64(), &body["data"]),
                (Some(seq), &json!({"total": seq as f64 + 0.5}))
            );
            let id = msg.id.to_string();
            assert_eq!(got.header("Nats-Msg-Id"), Some(id.as_str()), "message {seq}");
            assert_eq!(got.header("Content-Type"), Some("application/json"), "message {seq}");
            assert_eq!(got.headers.len(), 2, "only the two headers in bifrost mode: {:?}", got.headers);
        }
    })
    .await;
}

#[tokio::test]
async fn a_batch_published_again_is_deduplicated_and_still_confirmed() {
    with_stream(|ctx| async move {
        let sent = batch(&ctx.prefix, 1, 20, BridgeContentModeBody::Bifrost);
        ctx.publisher.publish(&sent).await.unwrap();
        ctx.publisher.publish(&sent).await.unwrap();
        assert_eq!(message_count(&ctx).await, 20);

        // A retried batch that overlaps the last one stores only what is new.
        let mut overlapping = sent[10..].to_vec();
        overlapping.extend(batch(&ctx.prefix, 21, 5, BridgeContentModeBody::Bifrost));
        ctx.publisher.publish(&overlapping).await.unwrap();
        assert_eq!(message_count(&ctx).await, 25);
        let id = overlapping[10].id.to_string();
        assert_eq!(stored(&ctx, 21).await.header("Nats-Msg-Id"), Some(id.as_str()));
    })
    .await;
}

#[tokio::test]
async fn binary_mode_puts_the_cloudevents_attributes_in_ce_headers_and_the_data_in_the_body() {
    with_stream(|ctx| async move {
        let target = Target::parse(&format!("{}.{{type}}", ctx.prefix)).unwrap();
        let event = event(7, r#"{"source":"checkout"}"#);
        let msg = outgoing(&event, &target, BridgeContentModeBody::CloudeventsBinary).unwrap();
        ctx.publisher.publish(std::slice::from_ref(&msg)).await.unwrap();

        let got = stored(&ctx, 1).await;
        assert_eq!(got.subject, format!("{}.order.submitted", ctx.prefix));
        assert_eq!(got.body, br#"{"total":7.5}"#);
        let id = event.id.to_string();
        assert_eq!(got.header("Nats-Msg-Id"), Some(id.as_str()));
        assert_eq!(got.header("Content-Type"), Some("application/json"));
        assert_eq!(got.header("ce-id"), Some(id.as_str()));
        assert_eq!(got.header("ce-specversion"), Some("1.0"));
        assert_eq!(got.header("ce-type"), Some("order.submitted"));
        assert_eq!(got.header("ce-source"), Some("checkout"));
        assert_eq!(got.header("ce-subject"), Some("order-7"));
        // Every attribute the message carries, and nothing else, besides the two headers.
        assert_eq!(got.headers.len(), msg.attributes.len() + 2, "{:?}", got.headers);
        for (name, value) in &msg.attributes {
            assert_eq!(got.header(&format!("ce-{name}")), Some(value.as_str()), "ce-{name}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_refused_naming_the_subject() {
    with_stream(|ctx| async move {
        let captured = batch(&ctx.prefix, 1, 3, BridgeContentModeBody::Bifrost);
        let nobody = format!("nobody-{}", Uuid::new_v4().simple());
        let mut sent = captured.clone();
        sent.extend(batch(&nobody, 4, 1, BridgeContentModeBody::Bifrost));

        match ctx.publisher.publish(&sent).await {
            Err(PublishError::Refused(why)) => {
                assert!(why.contains(&format!("{nobody}.order.submitted.order-4")), "{why}");
                assert!(why.contains("no responders"), "{why}");
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        // The messages before it were published all the same; the retry dedupes them.
        assert_eq!(message_count(&ctx).await, 3);
    })
    .await;
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_as_unreachable_within_seconds() {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), NatsPublisher::connect("nats://127.0.0.1:1"))
        .await
        .expect("connect gives up on its own");
    match result {
        Err(PublishError::Unreachable(why)) => assert!(why.contains("127.0.0.1:1"), "{why}"),
        Err(other) => panic!("expected Unreachable, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
}

/// A stand-in NATS server (no JetStream behind it) that completes every handshake and hands
/// each published message (connection number, subject, reply subject, the sid of the
/// connection's last subscription) to `on_publish`, which may write to the connection or
/// return `false` to drop it.
fn fake_server<F>(on_publish: F) -> String
where
    F: Fn(usize, &str, &str, &str, &mut std::net::TcpStream) -> bool + Send + Sync + 'static,
{
    use std::io::{BufRead, BufReader, Read, Write};

    let on_publish = std::sync::Arc::new(on_publish);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let on_publish = on_publish.clone();
            std::thread::spawn(move || {
                let info = r#"INFO {"server_id":"fake","version":"2.9.0","proto":1,"headers":true,"max_payload":1048576}"#;
                conn.write_all(format!("{info}\r\n").as_bytes()).ok()?;
                let mut reader = BufReader::new(conn.try_clone().ok()?);
                let (mut line, mut sid) = (String::new(), String::new());
                while reader.read_line(&mut line).ok()? > 0 {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["PING"] => conn.write_all(b"PONG\r\n").ok()?,
                        ["SUB", _, id] => sid = (*id).to_owned(),
                        // HPUB <subject> <reply> <header bytes> <total bytes>, then the bytes.
                        ["HPUB", subject, reply, _, total] => {
                            let mut payload = vec![0; total.parse::<usize>().ok()? + 2];
                            reader.read_exact(&mut payload).ok()?;
                            if !on_publish(n, subject, reply, &sid, &mut conn) {
                                return conn.shutdown(std::net::Shutdown::Both).ok();
                            }
                        }
                        _ => {}
                    }
                    line.clear();
                }
                Some(())
            });
        }
    });
    format!("nats://{addr}")
}

#[tokio::test]
async fn every_message_of_a_batch_is_sent_before_any_pub_ack_is_awaited() {
    use std::io::Write;
    use std::sync::Mutex;

    // Acks nothing until the whole batch has arrived: a publisher that waited for each
    // PubAck before sending the next message would get no answer at all.
    let seen: std::sync::Arc<Mutex<Vec<(String, String)>>> = Default::default();
    let url = {
        let seen = seen.clone();
        fake_server(move |_, subject, reply, sid, conn| {
            let mut seen = seen.lock().unwrap();
            seen.push((subject.to_owned(), reply.to_owned()));
            if seen.len() == 10 {
                for (seq, (_, reply)) in (1..).zip(seen.iter()) {
                    let ack = format!(r#"{{"stream":"S","seq":{seq}}}"#);
                    let _ =
                        conn.write_all(format!("MSG {reply} {sid} {}\r\n{ack}\r\n", ack.len()).as_bytes());
                }
            }
            true
        })
    };
    let publisher = NatsPublisher::connect(&url).await.unwrap();
    let sent = batch("piped", 1, 10, BridgeContentModeBody::Bifrost);
    tokio::time::timeout(Duration::from_secs(5), publisher.publish(&sent))
        .await
        .expect("the batch is confirmed without waiting for a PubAck per message")
        .unwrap();
    let subjects: Vec<String> = seen.lock().unwrap().iter().map(|(s, _)| s.clone()).collect();
    let expected: Vec<String> = sent.iter().map(|m| m.target.clone()).collect();
    assert_eq!(subjects, expected, "sent in batch order");
}

#[tokio::test]
async fn a_connection_dropped_mid_batch_fails_it_as_unreachable_without_waiting_for_acks() {
    // The first connection drops at the first message; the client's reconnections succeed.
    let publisher = NatsPublisher::connect(&fake_server(|n, _, _, _, _| n > 0)).await.unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.publish(&batch("dropped", 1, 5, BridgeContentModeBody::Bifrost)),
    )
    .await
    .expect("publish returns once the connection drops");
    match result {
        Err(PublishError::Unreachable(why)) => assert!(why.contains("5 of 5"), "{why}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Well before a PubAck would time out.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}
