//! Function calling and structured output through `joule serve`, driven by the clients agent
//! code really uses: OpenAI's Python client, LangChain's `ChatOpenAI` and a LangGraph ReAct
//! agent, against Qwen2.5-Coder-0.5B on this machine's CPU.

use std::process::Command;

use crate::support::{ensure_model, joule, python, repo, server_with};
use serde_json::Value;

/// How many `json_schema` prompts must all come back valid.
const SCHEMA_PROMPTS: usize = 50;

#[test]
fn agent_clients_get_well_formed_tool_calls_and_valid_structured_output() {
    ensure_model("qwen2.5-coder-0.5b");
    let server = server_with(joule(), &[]);
    let output = Command::new(python())
        .arg(repo().join("tests/python/tools_client.py"))
        .arg(format!("{}/v1", server.base))
        .arg("qwen2.5-coder-0.5b")
        .arg(SCHEMA_PROMPTS.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();

    // tool_choice auto: the model chose the weather tool, with a city argument.
    let auto = &seen["auto"];
    assert_eq!(auto["finish_reason"], "tool_calls", "{auto}");
    assert_eq!(auto["calls"][0]["name"], "get_weather", "{auto}");
    let city = auto["calls"][0]["arguments"]["city"]
        .as_str()
        .unwrap_or_default();
    assert!(city.contains("Paris"), "{auto}");
    assert!(
        auto["calls"][0]["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    // The second turn (content: null, then the tool's result) is accepted and answered.
    let round = &seen["round_trip"];
    assert_eq!(round["finish_reason"], "stop", "{round}");
    assert!(
        round["content"]
            .as_str()
            .is_some_and(|c| !c.trim().is_empty()),
        "{round}"
    );

    // A named function must be called even when the prompt asks for something else.
    let named = &seen["named"];
    assert_eq!(named["finish_reason"], "tool_calls", "{named}");
    assert_eq!(named["calls"][0]["name"], "get_time", "{named}");
    assert!(
        named["calls"][0]["arguments"]["timezone"].is_string(),
        "{named}"
    );

    // Streamed calls assemble into the same call as the whole answer (greedy decoding).
    let stream = &seen["stream"];
    assert_eq!(stream["finish_reason"], "tool_calls", "{stream}");
    assert_eq!(stream["calls"][0]["name"], auto["calls"][0]["name"]);
    assert_eq!(
        stream["calls"][0]["arguments"],
        auto["calls"][0]["arguments"]
    );

    // Every json_schema answer parses and has exactly the schema's fields and types.
    let answers = seen["schema"].as_array().unwrap();
    assert_eq!(answers.len(), SCHEMA_PROMPTS);
    for a in answers {
        assert_eq!(a["finish_reason"], "stop", "{a}");
        let text = a["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3, "{text}");
        assert!(o["city"].is_string() && o["country"].is_string(), "{text}");
        assert!(
            o["population_millions"]
                .as_u64()
                .is_some_and(|n| n <= 100_000),
            "{text}"
        );
    }
    let object: Value = serde_json::from_str(seen["json_object"].as_str().unwrap()).unwrap();
    assert!(object.is_object(), "{object}");

    // A parameter joule does not honour is refused by name.
    assert_eq!(seen["refused"]["status"], 400, "{}", seen["refused"]);
    assert_eq!(seen["refused"]["param"], "presence_penalty");

    // LangChain's bind_tools: a call of `add` with the numbers.
    let calls = seen["langchain_tools"].as_array().unwrap();
    assert!(
        calls
            .iter()
            .any(|c| c["name"] == "add" && c["args"]["a"] == 17 && c["args"]["b"] == 25),
        "{calls:?}"
    );
    // with_structured_output: a parsed object with both fields.
    let city = &seen["langchain_structured"];
    assert!(
        city["city"].as_str().is_some_and(|c| !c.is_empty())
            && city["country"].as_str().is_some_and(|c| !c.is_empty()),
        "{city}"
    );

    // LangGraph's ReAct agent: it called the tool, saw "Tokyo", and finished with an answer.
    let messages = seen["langgraph"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m["type"] == "tool" && m["content"] == "Tokyo"),
        "{messages:?}"
    );
    let last = messages.last().unwrap();
    assert_eq!(last["type"], "ai", "{messages:?}");
    assert!(
        last["tool_calls"].as_array().unwrap().is_empty(),
        "{messages:?}"
    );
    assert!(
        last["content"]
            .as_str()
            .is_some_and(|c| !c.trim().is_empty())
    );
}
