"""Drives `joule serve` with OpenAI's official Python client and prints what it saw as JSON.

Run by tests/serve.rs: python openai_client.py BASE_URL MODEL
"""

import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=900)
messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital city of France?"},
]
out = {}

chat = client.chat.completions.create(model=model, messages=messages, max_tokens=32)
out["chat"] = {
    "content": chat.choices[0].message.content,
    "role": chat.choices[0].message.role,
    "finish_reason": chat.choices[0].finish_reason,
    "prompt_tokens": chat.usage.prompt_tokens,
    "completion_tokens": chat.usage.completion_tokens,
    "total_tokens": chat.usage.total_tokens,
}

scored = client.chat.completions.create(
    model=model, messages=messages, max_tokens=12, logprobs=True, top_logprobs=3
)
out["logprobs"] = {
    "content": scored.choices[0].message.content,
    "tokens": [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": t.bytes,
            "top": [[a.token, a.logprob] for a in t.top_logprobs],
        }
        for t in scored.choices[0].logprobs.content
    ],
}

pieces = []
finish = None
usage = None
stream = client.chat.completions.create(
    model=model,
    messages=messages,
    max_tokens=32,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = {"pieces": pieces, "finish_reason": finish, "completion_tokens": usage}

models = client.models.list()
out["models"] = [m.id for m in models.data]

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    out["unknown_model"] = None
except openai.APIStatusError as e:
    out["unknown_model"] = {"status": e.status_code, "code": e.code}

print(json.dumps(out))
