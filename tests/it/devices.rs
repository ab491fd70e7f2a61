//! `joule devices`: the CPU is described, and an endpoint that answers is told from one that
//! does not (a one-shot HTTP server on loopback against a closed port).

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::support::{repo, run_in};

#[test]
fn devices_describe_the_cpu_and_probe_endpoints() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"data\":[]}",
            )
            .unwrap();
    });
    // A port that was free a moment ago: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let catalog = std::fs::read_to_string(repo().join("profiles/catalog.yaml"))
        .unwrap()
        .replace(
            "http://127.0.0.1:8080/v1",
            &format!("http://127.0.0.1:{port}/v1"),
        )
        .replace(
            "https://api.openai.com/v1",
            &format!("http://127.0.0.1:{closed}/v1"),
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.yaml"), catalog).unwrap();
    let (code, out, err) = run_in(
        dir.path(),
        &[
            "devices",
            "--catalog",
            "catalog.yaml",
            "--json",
            "--timeout",
            "5",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    server.join().unwrap();
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(d["cpu"]["threads"].as_u64().unwrap() >= 1);
    assert!(!d["cpu"]["model"].as_str().unwrap().is_empty());
    assert!(d["gpus"].is_array());
    let endpoint = |name: &str| {
        d["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(endpoint("lan-joule")["answers"], true, "{out}");
    assert_eq!(endpoint("lan-joule")["detail"], "HTTP 200");
    assert_eq!(endpoint("openai")["answers"], false);
    assert!(
        endpoint("openai")["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{out}"
    );
}
