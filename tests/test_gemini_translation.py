"""OpenAI <-> Gemini translation (providers.gemini_request / gemini_answer): no server,
no network; SDK objects in, SDK objects out."""
import base64
import json

import pytest
from google.genai import types

from providers import errors
from providers.gemini_answer import AnswerTranslation, ThoughtSignatures, retry_delay
from providers.gemini_request import RequestTranslation, function_args, tool_result

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


@pytest.fixture
def signatures():
    return ThoughtSignatures()


@pytest.fixture
def requests(signatures):
    return RequestTranslation("google", signatures=signatures)


@pytest.fixture
def answers(signatures):
    return AnswerTranslation("google", signatures=signatures)


def response(parts, finish="STOP", **extra):
    return types.GenerateContentResponse(
        candidates=[types.Candidate(content=types.Content(role="model", parts=parts), finish_reason=finish)],
        usage_metadata=types.GenerateContentResponseUsageMetadata(prompt_token_count=3, candidates_token_count=2),
        **extra)


# --- requests -----------------------------------------------------------------------------


def test_request_system_contents_and_config(requests):
    body = {"messages": [{"role": "system", "content": "Be terse."},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, "b"]},
                         {"role": "assistant", "content": "ok"}, {"role": "user", "content": "c"}],
            "max_tokens": 9, "stop": "END", "response_format": {"type": "json_object"}}
    request = requests.request("models/gemini-2.5-flash", body)
    assert request.model == "gemini-2.5-flash"
    assert [c.role for c in request.contents] == ["user", "model", "user"]
    assert [p.text for p in request.contents[0].parts] == ["a", "b"]
    assert request.config.system_instruction == "Be terse."
    assert request.config.max_output_tokens == 9 and request.config.stop_sequences == ["END"]
    assert request.config.response_mime_type == "application/json"
    assert requests.request("", body).model == "gemini-2.5-flash"  # the default model


def test_tools_and_tool_choice(requests):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    config = requests.config({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}}, None)
    assert config.tools[0].function_declarations[0].name == "f"
    assert config.tool_config.function_calling_config.allowed_function_names == ["f"]
    with pytest.raises(errors.CapabilityError):
        requests.config({"tools": [{"type": "web_search"}]}, None)


def test_data_urls_and_remote_urls(requests):
    part = requests.media_part(f"data:image/png;base64,{PNG}", "image")
    assert part.inline_data.mime_type == "image/png" and part.inline_data.data == base64.b64decode(PNG)
    assert requests.media_part("data:text/plain,hi%20there", "file").inline_data.data == b"hi there"
    assert requests.media_part("gs://bucket/cat.png", "image").file_data.mime_type == "image/png"
    with pytest.raises(errors.CapabilityError, match="data:"):
        requests.media_part("https://example.com/cat.png", "image")
    with pytest.raises(errors.CapabilityError):
        requests.media_part("data:image/png;base64,a", "image")


def test_function_args_and_tool_results():
    assert function_args('{"city": "Paris"}') == {"city": "Paris"}
    assert function_args("") == {} and function_args(None) == {}
    assert function_args("not json") == {"arguments": "not json"}
    assert function_args("[1, 2]") == {"value": [1, 2]}
    assert tool_result('{"temp": 21}') == {"temp": 21}
    assert tool_result("noon") == {"result": "noon"}


def test_invalid_value_is_a_request_error(requests):
    with pytest.raises(errors.UpstreamRequestError, match="temperature"):
        requests.request("gemini-2.5-flash", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})


def test_thought_signatures_round_trip(requests, answers):
    call = answers.tool_call(types.FunctionCall(name="get_weather", args={"city": "Paris"}), b"sig-bytes")
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [call, {"id": "call_other", "type": "function",
                                                    "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_other", "content": "noon"},
    ]
    _, contents = requests.contents("gemini-2.5-flash", messages)
    first, second = contents[1].parts
    assert first.thought_signature == b"sig-bytes" and second.thought_signature is None
    # Gemini 3 insists on a signature on the first call of a turn; unknown ones get the documented stand-in.
    reversed_calls = {**messages[1], "tool_calls": messages[1]["tool_calls"][::-1]}
    _, contents = requests.contents("gemini-3-pro-preview", [messages[0], reversed_calls])
    assert contents[1].parts[0].thought_signature is not None


# --- answers ------------------------------------------------------------------------------


def test_completion_text_usage_and_id(answers):
    answer = answers.completion("m", response([types.Part(text="hi"), types.Part(text="think", thought=True)],
                                              response_id="abc"))
    assert answer["id"] == "chatcmpl-abc"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hi", "reasoning_content": "think"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_completion_tool_call(answers):
    answer = answers.completion("m", response([types.Part(function_call=types.FunctionCall(name="f", args={"a": 1}))]))
    (call,) = answer["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"a": 1} and call["id"].startswith("call_")
    assert answer["choices"][0]["finish_reason"] == "tool_calls" and answer["choices"][0]["message"]["content"] is None


def test_finish_reasons(answers):
    assert answers.finish_reason("MAX_TOKENS", True, False) == "length"
    with pytest.raises(errors.Truncated):
        answers.finish_reason("MAX_TOKENS", False, False)
    with pytest.raises(errors.ProtocolError):
        answers.finish_reason("MALFORMED_FUNCTION_CALL", True, False)
    with pytest.raises(errors.Blocked, match="SAFETY"):
        answers.completion("m", response([], finish="SAFETY"))
    with pytest.raises(errors.Blocked, match="block_reason SAFETY"):
        answers.completion("m", types.GenerateContentResponse(
            prompt_feedback=types.GenerateContentResponsePromptFeedback(block_reason="SAFETY")))


def test_stream_chunks(answers):
    stream = answers.stream("m")
    chunks = [*stream.chunks(response([types.Part(text="a")], finish=None)),
              *stream.chunks(response([types.Part(text="b")])), *stream.end()]
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": "a"}, {"content": "b"}]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1


def test_retry_delay():
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    assert retry_delay({"details": [detail]}) == 37.0
    assert retry_delay({}) is None
