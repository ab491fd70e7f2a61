"""Drives `joule serve` the way agent code does: function calling and structured output with
OpenAI's official client, LangChain's ChatOpenAI (bind_tools, with_structured_output) and a
LangGraph ReAct agent of two tools. Prints what each saw as JSON; tests/it/serve_tools.rs
judges it.

Run: python tools_client.py BASE_URL MODEL N_SCHEMA_PROMPTS
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import openai

base_url, model, n_schema = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=900)
out = {}

weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
clock = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def call_of(message):
    return [
        {"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)}
        for c in (message.tool_calls or [])
    ]


# 1. tool_choice auto: the model decides to call, and the call is well formed.
first = client.chat.completions.create(
    model=model, messages=ask, tools=[weather, clock], max_tokens=96
)
choice = first.choices[0]
out["auto"] = {
    "finish_reason": choice.finish_reason,
    "content": choice.message.content,
    "calls": call_of(choice.message),
}

# 2. The round trip: the assistant turn with `content: null` and its calls, the tool's result,
# and the model's answer from it.
if choice.message.tool_calls:
    call = choice.message.tool_calls[0]
    follow = ask + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees Celsius."},
    ]
    second = client.chat.completions.create(
        model=model, messages=follow, tools=[weather, clock], max_tokens=64
    )
    out["round_trip"] = {
        "finish_reason": second.choices[0].finish_reason,
        "content": second.choices[0].message.content,
    }

# 3. A named function, and required: the answer must be a call of it.
named = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Tell me a joke."}],
    tools=[weather, clock],
    tool_choice={"type": "function", "function": {"name": "get_time"}},
    max_tokens=64,
)
out["named"] = {"finish_reason": named.choices[0].finish_reason, "calls": call_of(named.choices[0].message)}

# 4. Streamed: the calls arrive as tool_calls deltas and assemble into the same call.
calls = {}
finish = None
for chunk in client.chat.completions.create(
    model=model, messages=ask, tools=[weather, clock], max_tokens=96, stream=True
):
    for c in chunk.choices:
        finish = c.finish_reason or finish
        for d in c.delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = d.id or entry["id"]
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
out["stream"] = {
    "finish_reason": finish,
    "calls": [
        {"id": v["id"], "name": v["name"], "arguments": json.loads(v["arguments"])}
        for _, v in sorted(calls.items())
    ],
}

# 5. response_format json_schema over many prompts at once (they share the batch): every
# answer must parse and validate; the test checks the shapes. The number is bounded as a
# careful schema bounds it: a grammar keeps every prefix valid but cannot make a model that
# degenerates into "13000000..." stop before `max_tokens` (finish_reason would say `length`).
schema = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100000},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
cities = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Quito", "Seoul"]


def structured(i):
    city = cities[i % len(cities)]
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Give facts about {city} (item {i}) as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        max_tokens=80,
    )
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason}


with ThreadPoolExecutor(max_workers=8) as pool:
    out["schema"] = list(pool.map(structured, range(n_schema)))

json_object = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Describe a cat."}],
    response_format={"type": "json_object"},
    max_tokens=64,
)
out["json_object"] = json_object.choices[0].message.content

# 6. A parameter joule would not honour is refused by name, not ignored.
try:
    client.chat.completions.create(model=model, messages=ask, max_tokens=4, presence_penalty=0.7)
    out["refused"] = None
except openai.BadRequestError as e:
    out["refused"] = {"status": e.status_code, "param": e.param, "code": e.code}

# 7. LangChain: bind_tools and with_structured_output on ChatOpenAI, as written for OpenAI.
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

llm = ChatOpenAI(model=model, base_url=base_url, api_key="unused", temperature=0, max_tokens=96, max_retries=0, timeout=900)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def capital(country: str) -> str:
    """Look up the capital city of a country in the shipped atlas."""
    atlas = {"france": "Paris", "japan": "Tokyo", "peru": "Lima", "norway": "Oslo"}
    return atlas.get(country.strip().lower(), "unknown")


bound = llm.bind_tools([add, capital]).invoke("What is 17 plus 25? Use the add tool.")
out["langchain_tools"] = [{"name": c["name"], "args": c["args"]} for c in bound.tool_calls]


class City(BaseModel):
    city: str
    country: str


structured_llm = llm.with_structured_output(City)
answer = structured_llm.invoke("Name one large city and its country.")
out["langchain_structured"] = answer.model_dump() if answer is not None else None

# 8. LangGraph's prebuilt ReAct agent with the two tools: the loop must call a tool, see its
# result and finish with an answer.
from langgraph.prebuilt import create_react_agent

agent = create_react_agent(llm, [add, capital])
result = agent.invoke(
    {"messages": [("user", "What is the capital of Japan? Use the capital tool, then answer.")]},
    {"recursion_limit": 8},
)
out["langgraph"] = [
    {
        "type": m.type,
        "content": m.content if isinstance(m.content, str) else str(m.content),
        "tool_calls": [c["name"] for c in getattr(m, "tool_calls", []) or []],
    }
    for m in result["messages"]
]

print(json.dumps(out))
