"""The local OpenAI-compatible server speaks the real protocol, grounds its answers and misbehaves on cue."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import instructor
import openai
import pytest

from st_workflow.schemas import normalize_whitespace
from st_workflow.stage2_generation.models import GeneratedPairs, SearchTerms
from st_workflow.stage2_generation.prompts import load_prompt
from st_workflow.testing.openai_server import Faults, OpenAICompatServer

TITLE = "SWOT Level 2 River Single-Pass Vector Reach Data Product"
TEXT = (
    "The Surface Water and Ocean Topography (SWOT) mission measures the elevation of rivers, lakes and the ocean. "
    "It carries the Ka-band Radar Interferometer (KaRIn), which images two 50 km wide swaths on either side of the "
    "nadir track. The river single-pass product reports water surface elevation, slope and width for reaches of "
    "about 10 km. Discharge is estimated from these observations with several algorithms that are combined in a "
    "consensus product. Reaches are defined by the SWOT River Database, which also provides prior centerlines."
)


def _qa_messages(lo: int = 2, hi: int = 3) -> list[dict[str, str]]:
    return load_prompt("qa_pairs.v1").render(
        title=TITLE, source="cmr", text=TEXT, lo=lo, hi=hi, tlo=lo, thi=hi
    )


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON])
def test_instructor_answers_are_grounded_in_the_document(
    llm_server: OpenAICompatServer, mode: instructor.Mode
) -> None:
    client = instructor.from_openai(
        openai.OpenAI(base_url=llm_server.base_url, api_key="sk-x", max_retries=0), mode=mode
    )
    out, raw = client.chat.completions.create_with_completion(
        model="gpt-4o-mini", response_model=GeneratedPairs, messages=_qa_messages(2, 3), max_retries=0
    )
    assert 2 <= len(out.question_context) <= 3
    doc = normalize_whitespace(TEXT)
    for p in out.question_context:
        assert normalize_whitespace(p.context) in doc  # copied verbatim
        assert TITLE in p.query  # names the document's entity instead of "this mission"
    assert len(out.search_terms) == 3 and all(len(t.split()) >= 2 for t in out.search_terms)
    assert raw.usage.prompt_tokens > 0 and raw.usage.completion_tokens > 0
    assert llm_server.calls("qa") == {TITLE: 1}


def test_search_terms_variant(llm_server: OpenAICompatServer) -> None:
    client = instructor.from_openai(
        openai.OpenAI(base_url=llm_server.base_url, api_key="sk-x", max_retries=0)
    )
    msgs = load_prompt("search_terms.v1").render(title=TITLE, source="cmr", text=TEXT, tlo=3, thi=4)
    out = client.chat.completions.create(model="m", response_model=SearchTerms, messages=msgs, max_retries=0)
    assert len(out.search_terms) == 4
    assert llm_server.calls("search_terms") == {TITLE: 1}


def test_scripted_faults_in_order(llm_server: OpenAICompatServer) -> None:
    llm_server.faults = Faults(rate_limit=1, retry_after=0.25, server_error=1, drop=1, invalid=1)
    tools = [
        {
            "type": "function",
            "function": {"name": "GeneratedPairs", "parameters": GeneratedPairs.model_json_schema()},
        }
    ]
    body = {
        "model": "m",
        "messages": _qa_messages(),
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "GeneratedPairs"}},
    }
    url = llm_server.base_url + "/chat/completions"
    with httpx.Client(timeout=5) as http:
        r = http.post(url, json=body)
        assert (
            r.status_code == 429
            and r.headers["retry-after"] == "0.25"
            and r.headers["retry-after-ms"] == "250"
        )
        assert http.post(url, json=body).status_code == 500
        with pytest.raises(httpx.TransportError):  # connection closed without an answer
            http.post(url, json=body)
    with httpx.Client(timeout=5) as http:
        r = http.post(url, json=body)
        assert r.status_code == 200
        args = json.loads(r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
        assert not isinstance(args["question_context"], list)  # the scripted schema violation
        r = http.post(url, json=body)
        args = json.loads(r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
        GeneratedPairs.model_validate(args)  # then valid again
    counts = llm_server.stats()["by_task"]["qa"][TITLE]
    assert counts == {
        "requests": 5,
        "rate_limit": 1,
        "server_error": 1,
        "drop": 1,
        "invalid": 1,
        "answered": 2,
    }


def test_api_key_is_checked_and_never_exposed(tmp_path: Path) -> None:
    with OpenAICompatServer(api_key="sk-right") as srv:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="sk-wrong", max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        openai.OpenAI(base_url=srv.base_url, api_key="sk-right", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert "sk-right" not in json.dumps(srv.stats())


def test_a_client_killed_mid_request_is_never_counted() -> None:
    """kill -9 between the headers and the body leaves a short read: that is no request, and nobody paid for it."""
    body = json.dumps({"model": "m", "messages": _qa_messages()}).encode()
    with OpenAICompatServer() as srv:
        host, port = srv.base_url.split("//")[1].split("/")[0].split(":")
        for sent in (b"", body[: len(body) // 2]):
            with socket.create_connection((host, int(port))) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + sent
                )
                s.shutdown(socket.SHUT_WR)  # the client is gone
                s.recv(65536)
        empty = httpx.post(srv.base_url + "/chat/completions", json={"model": "m"})
        assert empty.status_code == 400 and "messages" in empty.json()["error"]["message"]
        assert srv.stats()["requests"] == 0 and srv.calls() == {}


def test_command_line_server_process(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "st_workflow.testing.openai_server",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--latency",
            "0.01",
            "--rate-limit",
            "1",
            "--retry-after",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=2)  # SDK retries the 429
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert r.choices[0].message.content
        stats = httpx.get(base + "/_stats").json()
        assert stats["requests"] == 2  # one 429, one answer
        assert httpx.post(base + "/_admin/faults", json={"server_error": 2}).json()["server_error"] == 2
        assert httpx.post(base + "/_admin/faults", json={"nonsense": 1}).status_code == 400
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
