"""Input files: every JSONL shape, text files, and bad input reported before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import InputError
from corral.sources import Defaults, PromptFile
from tests.conftest import corral, read_jsonl, write_jsonl


def _requests(path: Path, **defaults):
    source = PromptFile(path, Defaults(model="llama3.2", **defaults))
    source.scan()
    return list(source)


def test_every_line_shape_is_detected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"role": "user", "content": "ollama-batch-cluster shape"},
        {"prompt": "plain prompt", "id": "p2", "model": "qwen", "options": {"temperature": 0}},
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "chat"}]},
        "a bare JSON string",
    ])
    reqs = _requests(path, system="default system")
    assert [r.prompt for r in reqs] == ["ollama-batch-cluster shape", "plain prompt", "chat", "a bare JSON string"]
    assert reqs[0].messages[0] == {"role": "system", "content": "default system"}
    assert reqs[1].id == "p2" and reqs[1].model == "qwen" and reqs[1].options == {"temperature": 0}
    assert reqs[2].system == "sys"  # the line's own system message wins over the default
    assert reqs[0].id == "1" and reqs[3].id == "4"  # line numbers when no id is given


def test_openai_batch_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [{
        "custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
                 "max_tokens": 12, "temperature": 0.2, "logprobs": False,
                 "response_format": {"type": "json_object"}},
    }])
    source = PromptFile(path, Defaults())
    report = source.scan()
    (req,) = list(source)
    assert report.openai_batch
    assert req.id == "req-1" and req.model == "llama3.2"
    assert req.options == {"num_predict": 12, "temperature": 0.2}
    assert req.extra == {"logprobs": False}
    assert req.format == {"type": "json_object"}


def test_text_format_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbffirst prompt\n\nsecond prompt\r\n")
    reqs = _requests(path)
    assert [r.prompt for r in reqs] == ["first prompt", "second prompt"]


@pytest.mark.parametrize("content, fragment, line", [
    (b'{"prompt": "ok"}\n{"prompt": "broken"\n', "invalid JSON", 2),
    (b'{"prompt": "ok"}\n[1, 2]\n', "expected a JSON object", 2),
    (b'{"text": "no prompt key"}\n', "expected one of prompt, messages", 1),
    (b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n', "not UTF-8", 2),
    (b'{"prompt": "a\x00b"}\n', "NUL byte", 1),
    (b'{"prompt": 5}\n', "prompt must be a string", 1),
    (b'{"messages": []}\n', "messages must be a non-empty list", 1),
    (b'{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n', "duplicate id 'x'", 2),
    (b'{"custom_id": "a", "url": "/v1/files", "body": {"model": "m"}}\n', "unsupported url", 1),
    (b'{"prompt": "a"}\n{"custom_id": "b", "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}\n',
     "mixes OpenAI Batch lines", 2),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, content: bytes, fragment: str, line: int) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        PromptFile(path, Defaults(model="m")).scan()
    assert f"bad.jsonl:{line}:" in str(info.value)
    assert fragment in str(info.value)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        PromptFile(tmp_path / "empty.jsonl", Defaults(model="m")).scan()
    with pytest.raises(InputError, match="file not found"):
        PromptFile(tmp_path / "nope.jsonl", Defaults(model="m")).scan()


def test_no_model_anywhere(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    with pytest.raises(InputError, match="no model"):
        PromptFile(tmp_path / "p.jsonl", Defaults()).scan()


def test_cli_malformed_line_exits_2_before_any_request(tmp_path: Path, fake_ollama) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "fine"}\n{"prompt": oops}\n{"prompt": "fine too"}\n')
    proc = corral("run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "out.jsonl",
                  cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("corral: error: p.jsonl:2: invalid JSON (unexpected character, "
                                   "expected a JSON value at column 12)")
    assert fake_ollama.path_counts.get("/api/chat", 0) == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_skip_invalid_reports_and_goes_on(tmp_path: Path, fake_ollama) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "one"}\nnot json\n{"prompt": "two"}\n')
    proc = corral("run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "out.jsonl",
                  "--skip-invalid", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipping p.jsonl:2: invalid JSON" in proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["response"] for r in rows] == ["echo: one", "echo: two"]
    assert [r["line"] for r in rows] == [1, 3]
