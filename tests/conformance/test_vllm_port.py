"""vLLM's OpenAI-entrypoint tests, ported to target a running OpenAI-compatible server.

Origin: https://github.com/vllm-project/vllm, ``tests/entrypoints/openai/`` (Apache License 2.0, Copyright
contributors to the vLLM project); files read at the commits listed in ``README.md``. The tests are re-written
here, not copied, and changed: they talk to the server only through OpenAI's API (the ``openai`` client, or
httpx for what the client cannot send), leave out vLLM's extensions (``extra_body`` fields, LoRA, beam search,
prompt logprobs) and assert no particular model's words (the demo model's weights are random). Each test names
the test it comes from; ``README.md`` lists what was left out and why.
"""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import jsonschema
import openai
import pytest

from ._wire import error_of

MESSAGES = [{"role": "system", "content": "you are a helpful assistant"}, {"role": "user", "content": "what is 1+1?"}]
PROMPT = "Hello, my name is"


# --- chat_completion/test_chat.py -----------------------------------------------------------------------------


def test_no_logprobs_chat(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=5, temperature=0.0, logprobs=False)
    assert answer.choices[0].logprobs is None


@pytest.mark.parametrize("top_logprobs", [0, 5])
def test_some_logprobs_chat(client: openai.OpenAI, model: str, top_logprobs: int):
    """test_zero_logprobs_chat and test_some_logprobs_chat."""
    answer = client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=5, temperature=0.0, logprobs=True, top_logprobs=top_logprobs
    )
    content = answer.choices[0].logprobs.content
    assert content
    assert all(len(token.top_logprobs) == top_logprobs for token in content)


def test_logprob_bytes_rebuild_the_text(client: openai.OpenAI, model: str):
    """test_some_logprobs_chat's alternatives, checked for what ``bytes`` is for: tokens that split a character."""
    answer = client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=48, seed=4, logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True}
    )
    content = answer.choices[0].logprobs.content
    assert b"".join(bytes(token.bytes) for token in content).decode() == answer.choices[0].message.content
    for token in content:
        assert len({bytes(entry.bytes) for entry in token.top_logprobs}) == 5


def test_too_many_chat_logprobs(client: openai.OpenAI, model: str):
    with pytest.raises(openai.BadRequestError):
        for _ in client.chat.completions.create(
            model=model, messages=MESSAGES, max_completion_tokens=10, logprobs=True, top_logprobs=21, stream=True
        ):
            pass
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=10, logprobs=True, top_logprobs=30)
    assert raised.value.param == "top_logprobs"
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=10)
    assert answer.choices[0].message.content is not None


def test_single_chat_session(client: openai.OpenAI, model: str):
    messages = list(MESSAGES)
    answer = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=5, logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True}
    )
    assert answer.id
    assert len(answer.choices) == 1
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5
    message = answer.choices[0].message
    assert message.role == "assistant" and message.content is not None
    messages += [{"role": "assistant", "content": message.content}, {"role": "user", "content": "express your result in json"}]
    again = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=5)
    assert again.choices[0].message.content is not None
    assert again.usage.prompt_tokens > answer.usage.prompt_tokens


def test_chat_streaming(client: openai.OpenAI, model: str):
    whole = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=10, temperature=0.0)
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=10, temperature=0.0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.choices[0].delta.role in (None, "assistant") for chunk in chunks)
    finished = [chunk for chunk in chunks if chunk.choices[0].finish_reason is not None]
    assert finished == [chunks[-1]]
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == whole.choices[0].message.content


def test_chat_completion_stream_options(client: openai.OpenAI, http: httpx.Client, model: str):
    body = {"model": model, "messages": MESSAGES, "max_completion_tokens": 10, "temperature": 0.0}
    for chunk in client.chat.completions.create(**body, stream=True, stream_options={"include_usage": False}):
        assert chunk.usage is None
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    *with_choices, last = chunks
    assert all(chunk.usage is None and chunk.choices for chunk in with_choices)
    assert with_choices[-1].choices[0].finish_reason is not None
    assert last.choices == []
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    for stream_options in ({"include_usage": None}, {"include_usage": True}):
        response = http.post("/v1/chat/completions", json={**body, "stream": False, "stream_options": stream_options})
        assert error_of(response, 400)["param"].startswith("stream_options")


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["name", "age", "skills"],
}


def test_structured_outputs_json_chat(client: openai.OpenAI, model: str):
    # vLLM's structured_outputs={"json": ...} extension, asked for the way OpenAI's API does: response_format.
    response_format = {"type": "json_schema", "json_schema": {"name": "employee", "schema": SCHEMA, "strict": True}}
    messages = [{"role": "user", "content": "Give an example JSON for an employee profile"}]
    answer = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=120, response_format=response_format, seed=7)
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)
    messages += [{"role": "assistant", "content": answer.choices[0].message.content}, {"role": "user", "content": "Give me another one"}]
    again = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=120, response_format=response_format, seed=8)
    jsonschema.validate(json.loads(again.choices[0].message.content), SCHEMA)


def test_structured_outputs_type_error(http: httpx.Client, model: str):
    response = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 4, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": {"1": "Python"}}}}},
    )
    error_of(response, 400)


def test_structured_outputs_choice_chat_logprobs(client: openai.OpenAI, model: str):
    # Tokens the grammar forbids must not come back as -inf: OpenAI's smallest logprob is -9999.0.
    answer = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_completion_tokens=10,
        logprobs=True,
        top_logprobs=5,
        response_format={"type": "json_schema", "json_schema": {"name": "choice", "schema": {"enum": ["Python", "Java", "C++"]}}},
    )
    for token in answer.choices[0].logprobs.content:
        assert token.logprob >= -9999.0
        for entry in token.top_logprobs:
            assert entry.logprob >= -9999.0


def test_response_format_json_object(client: openai.OpenAI, model: str):
    for seed in (1, 2):
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": 'what is 1+1? please respond with a JSON object, the format is {"result": 2}'}],
            response_format={"type": "json_object"},
            max_completion_tokens=200,
            seed=seed,
        )
        content = answer.choices[0].message.content
        assert content.startswith("{")
        if answer.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(content), dict)


def test_response_format_json_schema(client: openai.OpenAI, model: str):
    schema = {"type": "object", "properties": {"result": {"type": "integer", "minimum": 0, "maximum": 1000}}}
    for seed in (1, 2):
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": 'what is 1+1? The format is "result": 2'}],
            response_format={"type": "json_schema", "json_schema": {"name": "foo_test", "schema": schema}},
            max_completion_tokens=40,
            seed=seed,
        )
        assert answer.choices[0].finish_reason == "stop"
        loaded = json.loads(answer.choices[0].message.content)
        jsonschema.validate(loaded, schema)
        assert set(loaded) <= {"result"}


def test_response_format_text(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "what is 1+1?"}], max_completion_tokens=10, response_format={"type": "text"}
    )
    assert answer.choices[0].message.content is not None


def test_extra_fields_allowed(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "what is 1+1?", "extra_field": "0"}], temperature=0, seed=0, max_tokens=5
    )
    assert answer.choices[0].message.content is not None


def test_complex_message_content(client: openai.OpenAI, model: str):
    """test_complex_message_content and test_custom_role's check: text parts mean the same as a string."""
    text = "what is 1+1? please provide the result without any other text."
    as_parts = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": [{"type": "text", "text": text}]}], temperature=0, seed=0, max_tokens=8
    )
    as_string = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], temperature=0, seed=0, max_tokens=8)
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens


@pytest.mark.parametrize("seed", [-(2**63) - 1, 2**63])
def test_long_seed(client: openai.OpenAI, model: str, seed: int):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=[{"role": "system", "content": "You are a helpful assistant."}], temperature=0, seed=seed, max_tokens=4)
    assert raised.value.param == "seed"


def test_chat_completion_n_parameter_non_streaming(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is the opposite of big?"}],
        max_completion_tokens=20,
        temperature=0.7,
        n=3,
        extra_body={"ignore_eos": True},
    )
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert all(choice.message.content for choice in answer.choices)
    assert len({choice.message.content for choice in answer.choices}) > 1
    assert answer.usage.completion_tokens == 60


def test_chat_completion_n_parameter_streaming(client: openai.OpenAI, model: str):
    by_index: dict[int, list[str]] = defaultdict(list)
    finished: dict[int, int] = defaultdict(int)
    for chunk in client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=15, temperature=0.7, n=2, stream=True, extra_body={"ignore_eos": True}
    ):
        for choice in chunk.choices:
            if choice.delta.content:
                by_index[choice.index].append(choice.delta.content)
            finished[choice.index] += choice.finish_reason is not None
    assert sorted(by_index) == [0, 1]
    assert all("".join(parts) for parts in by_index.values())
    assert finished == {0: 1, 1: 1}


def test_chat_completion_n_with_seed(client: openai.OpenAI, model: str):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_completion_tokens": 10, "temperature": 0.8, "n": 2, "seed": 42}
    first = client.chat.completions.create(**body, extra_body={"ignore_eos": True})
    assert [choice.index for choice in first.choices] == [0, 1]
    assert all(choice.message.content for choice in first.choices)
    second = client.chat.completions.create(**body, extra_body={"ignore_eos": True})
    assert [choice.message.content for choice in second.choices] == [choice.message.content for choice in first.choices]


def test_chat_completion_n_equals_1(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}], max_completion_tokens=10, temperature=0.7, n=1)
    assert len(answer.choices) == 1 and answer.choices[0].index == 0
    assert answer.choices[0].message.content is not None


# --- completion/test_completion.py ----------------------------------------------------------------------------


def test_single_completion(client: openai.OpenAI, model: str):
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0, extra_body={"ignore_eos": True})
    assert answer.id
    assert len(answer.choices) == 1
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5


def test_single_completion_token_ids(client: openai.OpenAI, model: str):
    answer = client.completions.create(model=model, prompt=[40, 41, 42, 43, 44], max_tokens=5, temperature=0.0)
    assert answer.usage.prompt_tokens == 5
    assert isinstance(answer.choices[0].text, str)


def test_no_logprobs(client: openai.OpenAI, model: str):
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0, logprobs=None)
    assert answer.choices[0].logprobs is None


@pytest.mark.parametrize(
    "logprobs",
    [
        0,
        1,
        5,
    ],
)
def test_some_logprobs(client: openai.OpenAI, model: str, logprobs: int):
    """test_zero_logprobs and test_some_logprobs: N alternatives, plus the sampled token when it is not among them."""
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0.0, logprobs=logprobs)
    result = answer.choices[0].logprobs
    assert len(result.tokens) == len(result.token_logprobs) == len(result.top_logprobs) == len(result.text_offset) == answer.usage.completion_tokens
    assert result.text_offset == sorted(result.text_offset)
    for top, token in zip(result.top_logprobs, result.tokens, strict=True):
        assert max(logprobs, 1) <= len(top) <= logprobs + 1 and token in top


def test_too_many_completion_logprobs(client: openai.OpenAI, model: str):
    # OpenAI's legacy logprobs stop at 5 (vLLM allows 20).
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0, logprobs=6)
    assert raised.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError):
        for _ in client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0, logprobs=30, stream=True):
            pass
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0)
    assert isinstance(answer.choices[0].text, str)


def test_completion_streaming(client: openai.OpenAI, model: str):
    prompt = "What is an LLM?"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0.0, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0.0, stream=True, extra_body={"ignore_eos": True}))
    assert [chunk for chunk in chunks if chunk.choices[0].finish_reason is not None] == [chunks[-1]]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text


def test_parallel_no_streaming(client: openai.OpenAI, model: str):
    answer = client.completions.create(model=model, prompt="What is an LLM?", max_tokens=16, n=3, temperature=1.0, logprobs=0, seed=42)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert all(choice.finish_reason in ("stop", "length") for choice in answer.choices)
    assert all(len(choice.logprobs.tokens) <= 16 for choice in answer.choices)
    assert len({choice.text for choice in answer.choices}) == 3


def test_parallel_streaming(client: openai.OpenAI, model: str):
    texts: list[list[str]] = [[], [], []]
    finished = [0, 0, 0]
    for chunk in client.completions.create(model=model, prompt="What is an LLM?", max_tokens=16, n=3, temperature=1.0, stream=True, seed=42):
        for choice in chunk.choices:
            texts[choice.index].append(choice.text)
            finished[choice.index] += choice.finish_reason is not None
    assert finished == [1, 1, 1]
    assert all(len(parts) <= 16 for parts in texts)
    assert len({"".join(parts) for parts in texts}) == 3


def test_completion_stream_options(client: openai.OpenAI, http: httpx.Client, model: str):
    body = {"model": model, "prompt": "What is the capital of France?", "max_tokens": 5, "temperature": 0.0}
    for stream_options in ({"include_usage": False}, {}):
        for chunk in client.completions.create(**body, stream=True, stream_options=stream_options):
            assert chunk.usage is None
    *with_choices, last = client.completions.create(**body, stream=True, stream_options={"include_usage": True})
    assert all(chunk.usage is None and chunk.choices for chunk in with_choices)
    assert with_choices[-1].choices[0].finish_reason is not None
    assert last.choices == []
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    for stream_options in ({"include_usage": None}, {"include_usage": True}):
        response = http.post("/v1/completions", json={**body, "stream": False, "stream_options": stream_options})
        assert error_of(response, 400)["param"].startswith("stream_options")


@pytest.mark.parametrize("prompts", [[PROMPT] * 2, [[40, 41, 42, 43, 44]] * 2], ids=["texts", "token-ids"])
def test_batch_completions(client: openai.OpenAI, http: httpx.Client, model: str, prompts: list):
    batch = client.completions.create(model=model, prompt=prompts, max_tokens=5, temperature=0.0)
    assert [choice.index for choice in batch.choices] == [0, 1]
    assert batch.choices[0].text == batch.choices[1].text
    # Without vLLM's beam search: n choices for each prompt, prompt by prompt.
    batch = client.completions.create(model=model, prompt=prompts, n=2, max_tokens=5, temperature=0.0)
    assert [choice.index for choice in batch.choices] == [0, 1, 2, 3]
    texts = ["", ""]
    for chunk in client.completions.create(model=model, prompt=prompts, max_tokens=5, temperature=0.0, stream=True):
        assert len(chunk.choices) == 1
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts[0] == texts[1]


@pytest.mark.parametrize("logprobs", [1, 0])
def test_echo_logprob_completion(client: openai.OpenAI, model: str, logprobs: int):
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0, echo=True, logprobs=logprobs)
    assert answer.choices[0].text.startswith(PROMPT)
    result = answer.choices[0].logprobs
    assert len(result.tokens) > 5 and len(result.text_offset) == len(result.tokens)
    assert result.token_logprobs[0] is None and result.top_logprobs[0] is None
    for top in result.top_logprobs[1:]:
        assert max(logprobs, 1) <= len(top) <= logprobs + 1


# --- completion/test_completion_text_offset.py ----------------------------------------------------------------


def test_stream_text_offset_matches_non_stream_with_stop_holdback(client: openai.OpenAI, model: str):
    # The origin feeds vLLM's serving class made-up outputs; here the server's own, with a stop string that may
    # hold text back while it could still be starting.
    body = {"model": model, "prompt": "Hi", "max_tokens": 12, "temperature": 0.0, "logprobs": 0, "stop": ["\n\n"], "extra_body": {"ignore_eos": True}}
    whole = client.completions.create(**body).choices[0]
    streamed = [offset for chunk in client.completions.create(**body, stream=True) for choice in chunk.choices if choice.logprobs for offset in choice.logprobs.text_offset]
    assert streamed == whole.logprobs.text_offset
    assert len(streamed) == len(whole.logprobs.tokens)


# --- completion/test_prompt_validation.py, completion/test_empty_prompt_list.py --------------------------------


@pytest.mark.parametrize("prompt", [[], [999999]], ids=["empty-list", "out-of-vocab"])
def test_invalid_prompts(http: httpx.Client, model: str, prompt: list):
    """test_empty_prompt_list_rejected, test_out_of_vocab_token_ids."""
    response = http.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 5})
    assert error_of(response, 400)["param"] == "prompt"


def test_nonempty_prompt_list_ok(client: openai.OpenAI, model: str):
    answer = client.completions.create(model=model, prompt=["hello"], max_tokens=2)
    assert len(answer.choices) == 1


# --- basic/test_basic.py --------------------------------------------------------------------------------------


def test_check_health(http: httpx.Client):
    assert http.get("/health").status_code == 200


def test_request_cancellation(base_url: str, client: openai.OpenAI, model: str):
    # Fewer and shorter than the origin's 200 requests: clients that time out leave a server that still answers.
    impatient = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=0.3)
    for _ in range(3):
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Write a long story"}], max_tokens=4000, extra_body={"ignore_eos": True}
            )
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Write a long story"}], max_tokens=10)
    assert len(answer.choices) == 1


def test_request_wrong_content_type(client: openai.OpenAI, model: str):
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Write a long story"}],
            max_tokens=10,
            extra_headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert 400 <= raised.value.status_code < 500


# --- basic/test_chat_logit_bias_validation.py -----------------------------------------------------------------


def test_chat_logit_bias_valid(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Testing valid logit bias"}], max_tokens=5, logit_bias={"100": 1.0})
    assert answer.choices[0].message.content is not None


def test_chat_logit_bias_invalid(client: openai.OpenAI, model: str):
    # An id past any vocabulary; the origin also checks that vLLM's message names the vocabulary's size.
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Testing invalid logit bias"}], max_tokens=5, logit_bias={"2000000000": 1.0})
    assert raised.value.status_code == 400
    assert "2000000000" in str(raised.value)


# --- chat_completion/test_tool_choice_null.py, chat_completion/test_completion_with_function_calling.py --------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Berlin, in fahrenheit?"}]


@pytest.mark.parametrize("tools", [[WEATHER], None], ids=["with-tools", "without-tools"])
def test_null_tool_choice_is_like_an_absent_one(http: httpx.Client, model: str, tools):
    """test_null_tool_choice_defaults_to_auto_like_an_absent_one, ..._without_tools_matches_an_absent_one."""
    body = {"model": model, "messages": WEATHER_QUESTION, "max_tokens": 8, "temperature": 0.0, "tools": tools}
    absent = http.post("/v1/chat/completions", json=body)
    null = http.post("/v1/chat/completions", json={**body, "tool_choice": None})
    assert absent.status_code == null.status_code == 200, (absent.text, null.text)
    assert absent.json()["choices"] == null.json()["choices"]


def test_null_tool_choice_does_not_conflict_with_structured_outputs(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(
        model=model, messages=WEATHER_QUESTION, max_tokens=20, tool_choice=None, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": ["yes", "no"]}}}
    )
    assert json.loads(answer.choices[0].message.content) in ("yes", "no")


def test_invalid_tool_choice_is_still_rejected(http: httpx.Client, model: str):
    response = http.post("/v1/chat/completions", json={"model": model, "messages": WEATHER_QUESTION, "max_tokens": 4, "tools": [WEATHER], "tool_choice": "bogus"})
    assert error_of(response, 400)["param"] == "tool_choice"


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_current_weather"}}], ids=["required", "named"])
def test_function_tool_use(client: openai.OpenAI, model: str, tool_choice, streamed: bool):
    body = {"model": model, "messages": WEATHER_QUESTION, "tools": [WEATHER], "tool_choice": tool_choice, "max_tokens": 200, "seed": 11}
    if streamed:
        calls: dict[int, str] = defaultdict(str)
        names: dict[int, str] = defaultdict(str)
        finish = []
        for chunk in client.chat.completions.create(**body, stream=True):
            choice = chunk.choices[0]
            assert not choice.delta.content
            for call in choice.delta.tool_calls or []:
                names[call.index] += call.function.name or ""
                calls[call.index] += call.function.arguments or ""
            if choice.finish_reason is not None:
                finish.append(choice.finish_reason)
        assert finish == ["tool_calls"]
        arguments = [calls[index] for index in sorted(calls)]
        assert set(names.values()) == {"get_current_weather"}
    else:
        answer = client.chat.completions.create(**body)
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "tool_calls"
        assert not message.content
        assert {call.function.name for call in message.tool_calls} == {"get_current_weather"}
        arguments = [call.function.arguments for call in message.tool_calls]
    assert len(arguments) == 1
    jsonschema.validate(json.loads(arguments[0]), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("arguments", ["{}", ""], ids=["empty-object", "empty-string"])
def test_no_args_tool_call(client: openai.OpenAI, model: str, arguments: str):
    tools = [{"type": "function", "function": {"name": "get_current_time", "description": "Get the current date and time.", "parameters": {"type": "object", "properties": {}, "required": []}}}]
    messages: list = [{"role": "user", "content": "What time is it now?"}]
    answer = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="required", temperature=0.0, seed=42, max_tokens=100)
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "get_current_time"
    assert json.loads(call.function.arguments) == {}
    messages.append({"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "2025-01-01T12:00:00"})
    final = client.chat.completions.create(model=model, messages=messages, temperature=0.0, seed=42, max_completion_tokens=8)
    assert final.choices[0].message.content is not None


def test_inconsistent_tool_choice_and_tools(http: httpx.Client, model: str):
    named = {"type": "function", "function": {"name": "dummy_function_name"}}
    tool = {"type": "function", "function": {"name": "dummy_function_name", "description": "This is a dummy function", "parameters": SCHEMA}}
    cases = [
        {"tool_choice": named},
        {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "nondefined_function_name"}}},
        {"tools": [tool], "tool_choice": {}},
    ]
    for case in cases:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": WEATHER_QUESTION, "max_tokens": 8, **case})
        assert error_of(response, 400)["param"].startswith("tool"), case


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_current_weather"}}], ids=["required", "named"])
def test_max_tokens_with_tool_choice_required(client: openai.OpenAI, model: str, tool_choice):
    answer = client.chat.completions.create(model=model, messages=WEATHER_QUESTION, temperature=0, max_completion_tokens=1, tools=[WEATHER], tool_choice=tool_choice)
    choice = answer.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None


# --- chat_completion/test_non_object_body_validation.py -------------------------------------------------------


@pytest.mark.parametrize("body", [b"this is not valid json{{{", b'["not", "an", "object"]', b"42", b"null"], ids=["not-json", "list", "number", "null"])
def test_chat_completion_request_rejects_non_object_body(http: httpx.Client, body: bytes):
    response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert error_of(response, 400)["type"] == "invalid_request_error"
