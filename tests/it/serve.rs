//! `joule serve` end to end: the real binary on a loopback port, driven by OpenAI's Python
//! client and by plain HTTP requests, with the real SmolLM2 model.

use std::process::Command;

use crate::support::{python, repo, server};
use serde_json::{Value, json};

#[test]
fn the_official_openai_client_chats_and_streams() {
    let server = server();
    let output = Command::new(python())
        .arg(repo().join("tests/python/openai_client.py"))
        .arg(format!("{}/v1", server.base))
        .arg("smollm2-135m")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    let chat = &seen["chat"];
    assert_eq!(chat["role"], "assistant");
    assert!(
        chat["content"].as_str().unwrap().contains("Paris"),
        "{chat}"
    );
    assert_eq!(chat["finish_reason"], "stop");
    let (p, c) = (
        chat["prompt_tokens"].as_u64().unwrap(),
        chat["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && c > 0);
    assert_eq!(chat["total_tokens"].as_u64().unwrap(), p + c);

    // Greedy decoding: the streamed pieces join into exactly the same answer.
    let stream = &seen["stream"];
    let pieces: Vec<&str> = stream["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(pieces.len() > 1, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), chat["content"].as_str().unwrap());
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["completion_tokens"], chat["completion_tokens"]);

    // Log-probabilities: the tokens spell the answer, each greedy pick is its step's likeliest
    // token, and the alternatives are ranked.
    let scored = &seen["logprobs"];
    let tokens = scored["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty(), "{scored}");
    let spelled: String = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(spelled, scored["content"].as_str().unwrap(), "{scored}");
    assert!(chat["content"].as_str().unwrap().starts_with(&spelled));
    for t in tokens {
        let lp = t["logprob"].as_f64().unwrap();
        let top: Vec<(&str, f64)> = t["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a[0].as_str().unwrap(), a[1].as_f64().unwrap()))
            .collect();
        assert_eq!(top.len(), 3, "{t}");
        assert!(lp <= 0.0 && top.windows(2).all(|w| w[0].1 >= w[1].1), "{t}");
        assert_eq!(
            (top[0].0, top[0].1),
            (t["token"].as_str().unwrap(), lp),
            "{t}"
        );
        assert_eq!(
            t["bytes"].as_array().unwrap().len(),
            t["token"].as_str().unwrap().len()
        );
    }

    let models: Vec<&str> = seen["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"smollm2-135m") && !models.contains(&"gpt-4o-mini"),
        "{models:?}"
    );
    assert_eq!(
        seen["unknown_model"],
        json!({"status": 404, "code": "model_not_found"})
    );
}

/// A client without reqwest's 30 s default timeout: on a loaded 2-core machine a queued
/// request can legitimately take longer, and the server itself is what is under test.
fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
}

fn post(client: &reqwest::blocking::Client, url: &str, body: &str) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn bad_requests_get_openai_style_json_errors() {
    let server = server();
    let client = http();
    let url = format!("{}/v1/chat/completions", server.base);
    let long = "word ".repeat(6000);
    let over_long =
        json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": long}]})
            .to_string();
    let cases = [
        ("{not json", 400, "invalid_json"),
        (r#"{"messages": []}"#, 400, "invalid_json"),
        (
            r#"{"model": "smollm2-135m", "messages": []}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}"#,
            404,
            "model_not_found",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}"#,
            404,
            "model_not_found",
        ),
        (
            r#"{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}"#,
            400,
            "invalid_request",
        ),
        (over_long.as_str(), 400, "context_length_exceeded"),
    ];
    for (body, status, code) in cases {
        let (got, error) = post(&client, &url, body);
        assert_eq!(got, status, "{body:.60}: {error}");
        assert_eq!(error["error"]["code"], code, "{body:.60}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (got, error) = post(&client, &url, &"x".repeat(3 << 20));
    assert_eq!(got, 413, "{error}");
    assert_eq!(error["error"]["code"], "invalid_body");
    // The server closes that connection (its unread body is still on it), so the client's next
    // request goes out on a new one instead of failing on the old.
    let response = client.post(&url).body("x".repeat(3 << 20)).send().unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(response.headers()["connection"], "close");
    let response = client.get(&url).send().unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.json::<Value>().unwrap()["error"]["code"],
        "method_not_allowed"
    );
    let response = client
        .get(format!("{}/v2/nothing", server.base))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.json::<Value>().unwrap()["error"]["code"],
        "unknown_url"
    );
}

#[test]
fn eight_concurrent_clients_all_get_complete_correct_answers() {
    let server = server();
    let url = format!("{}/v1/chat/completions", server.base);
    let questions = [
        "Say hi.",
        "What is the capital of France?",
        "Name three colours.",
        "What is 2 + 2?",
        "Write a haiku about rain.",
        "What does a CPU do?",
        "Name a fruit that is yellow.",
        "How many days are in a week?",
    ];
    let body = |q: &str| {
        json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": q}], "max_tokens": 24})
            .to_string()
    };
    let content = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Each question alone first: the batch of eight must give each the same answer.
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            let (status, v) = post(&http(), &url, &body(q));
            assert_eq!(status, 200, "{v}");
            content(&v)
        })
        .collect();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| {
                let (url, body) = (&url, body(q));
                s.spawn(move || post(&http(), url, &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, v)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(content(v), alone[i], "question {i} in a batch of eight");
        assert!(
            ["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()),
            "{v}"
        );
        assert_eq!(v["joule"]["device"], "cpu");
        assert_eq!(v["joule"]["load_s"], 0.0, "the model was resident");
        // Asked before: the chat template's and question's whole blocks come from the cache.
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert!(cached >= 16, "{v}");
    }
    let health: Value = http()
        .get(format!("{}/health", server.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["resident"], json!(["smollm2-135m"]));
    let engine = &health["engines"]["smollm2-135m"];
    assert_eq!(engine["batch_capacity"], 8, "{health}");
    assert!(engine["kv_budget_bytes"].as_u64().unwrap() > 0, "{health}");
    assert!(engine["prefix_hits"].as_u64().unwrap() >= 8, "{health}");
}

#[test]
fn the_http_backend_gets_the_same_answer_as_local_inference() {
    use joule_models::local::{Flow, LoadOptions, LocalBackend, Message, Request};
    use joule_models::openai::wire::ChatRequest;
    use joule_models::openai::{OpenAiBackend, RetryPolicy};

    let server = server();
    let question = "Name a fruit that is yellow.";
    let catalog = std::sync::Arc::new(joule_planner::catalog::Catalog::builtin());
    let local = LocalBackend::new(
        catalog,
        joule_app::Settings::from_env().unwrap().model_store(),
        Some("cpu"),
        u64::MAX,
        LoadOptions::default(),
    )
    .unwrap()
    .generate(
        "smollm2-135m",
        &Request::chat(vec![Message::new("user", question)], 16),
        &mut |_| Flow::Continue,
    )
    .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = OpenAiBackend::new(
        &format!("{}/v1", server.base),
        None,
        RetryPolicy {
            deadline: std::time::Duration::from_secs(900),
            ..RetryPolicy::default()
        },
    )
    .unwrap();
    for stream in [false, true] {
        let request = ChatRequest::user("smollm2-135m", question, 16, stream);
        let remote = runtime
            .block_on(backend.chat(&request, &mut |_| {}))
            .unwrap();
        assert_eq!(remote.text, local.text, "stream: {stream}");
        if !stream {
            let usage = remote.usage.unwrap();
            assert_eq!(usage.completion_tokens as usize, local.completion_tokens);
            assert_eq!(remote.server.unwrap().device, "cpu");
        }
    }
}

#[test]
fn api_keys_cors_one_model_and_text_completions() {
    crate::support::ensure_smol();
    let mut command = crate::support::joule();
    command.env("JOULE_API_KEYS", "k-one, k-two");
    let server = crate::support::server_with(command, &["--cors-origin", "http://app.test"]);
    let client = http();
    let models = format!("{}/v1/models", server.base);

    // No key, a wrong key: 401 with OpenAI's codes. The second configured key works.
    let r = client.get(&models).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "missing_api_key"
    );
    let r = client.get(&models).bearer_auth("k-three").send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let listed: Value = client
        .get(&models)
        .bearer_auth("k-two")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"smollm2-135m"), "{listed}");
    // Health needs no key (load balancers probe it).
    assert_eq!(
        client
            .get(format!("{}/health", server.base))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // One model: present, not downloaded, not in the catalog.
    let one = |id: &str| {
        let r = client
            .get(format!("{models}/{id}"))
            .bearer_auth("k-one")
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (status, m) = one("smollm2-135m");
    assert_eq!(
        (status, m["id"].as_str()),
        (200, Some("smollm2-135m")),
        "{m}"
    );
    let (status, m) = one("no-such-model");
    assert_eq!(
        (status, m["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{m}"
    );
    let (status, m) = one("gpt-4o-mini");
    assert_eq!(status, 404, "{m}");
    assert!(
        m["error"]["message"].as_str().unwrap().contains("remote"),
        "{m}"
    );

    // A CORS preflight from the allowed origin is answered; another origin gets no grant.
    let preflight = |origin: &str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/chat/completions", server.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .unwrap()
    };
    let r = preflight("http://app.test");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    assert!(
        preflight("http://evil.test")
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // The legacy text completion: raw prompt, OpenAI's shape, greedy and repeatable.
    let complete = |body: Value| {
        let r = client
            .post(format!("{}/v1/completions", server.base))
            .bearer_auth("k-one")
            .json(&body)
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let body =
        json!({"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 8});
    let (status, first) = complete(body.clone());
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "text_completion");
    let text = first["choices"][0]["text"].as_str().unwrap();
    assert!(
        !text.is_empty() && first["usage"]["completion_tokens"].as_u64().unwrap() <= 8,
        "{first}"
    );
    assert_eq!(complete(body).1["choices"][0]["text"], text);
    // Legacy log-probabilities: one entry per token, offsets into the text.
    let (status, scored) = complete(
        json!({"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 8, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{scored}");
    let lp = &scored["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text, "{lp}");
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets.len(), tokens.len());
    assert!(
        offsets.first() == Some(&0) && offsets.windows(2).all(|w| w[0] < w[1]),
        "{lp}"
    );
    assert!(
        lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_object().unwrap().len() <= 2),
        "{lp}"
    );
    for (tail, param) in [
        (json!({"logprobs": 9}), "logprobs"),
        (json!({"logprobs": 1, "stream": true}), "logprobs"),
    ] {
        let mut body = json!({"model": "smollm2-135m", "prompt": "x"});
        body.as_object_mut()
            .unwrap()
            .extend(tail.as_object().unwrap().clone());
        let (status, refused) = complete(body);
        assert_eq!(
            (status, refused["error"]["param"].as_str()),
            (400, Some(param)),
            "{refused}"
        );
    }
    let (status, refused) = complete(json!({"model": "smollm2-135m", "prompt": "x", "echo": true}));
    assert_eq!(
        (status, refused["error"]["param"].as_str()),
        (400, Some("echo")),
        "{refused}"
    );

    // Embeddings: a clear 404 that says why.
    let r = client
        .post(format!("{}/v1/embeddings", server.base))
        .bearer_auth("k-one")
        .json(&json!({"model": "smollm2-135m", "input": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(
        r.json::<Value>().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embedding")
    );
}
