"""The corpus of hand-assembled attack pickles (tests/pickles.py) against the upload path.

Every case must be refused with UnsafePickle by ``safe_loads`` in bounded memory, answer 4xx
JSON through the upload route with nothing stored, and, once, through a real gunicorn server
with one sync worker: the same worker answers every case and what follows, and its memory stays
bounded. No case ever creates its marker file (the code-execution cases would).
"""

from __future__ import annotations

import pickletools
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
import requests
from pickles import ATTACKS, assemble, cases, counts
from servers import serve

from flask_river_ml import UnsafePickle
from flask_river_ml.unpickle import safe_loads

#: An upload limit like the default's order: the budget must hold even then.
MAX_BYTES = 256 * 1024 * 1024
#: What refusing one case may allocate at its peak.
PEAK_LIMIT = 100 * 1024 * 1024
CASES = list(cases(Path("/marker-placeholder")))


def _marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def test_the_corpus_covers_every_attack_class_in_every_protocol():
    """Each attack class is tried in protocols 0 to 5, with GLOBAL and STACK_GLOBAL; each case
    is a well-formed pickle (a refusal must not come from a mistake of the assembler)."""
    kinds = {attack.kind for attack in ATTACKS}
    assert kinds == {
        "code execution", "getattr chain", "format string", "array memory", "allocation bomb",
        "container growth", "import", "file access", "unlisted callable", "BUILD state", "Rust panic", "deferred cost",
    }  # fmt: skip
    for kind in kinds:
        protocols = {(case.protocol, case.stack_global) for case in CASES if case.attack.kind == kind}
        assert {protocol for protocol, _ in protocols} == set(range(6)), kind
        assert (4, True) in protocols and (5, True) in protocols, kind
    opcodes = Counter(opcode.name for case in CASES for opcode, _, _ in pickletools.genops(case.data))
    for name in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "MEMOIZE",
                 "BINPUT", "BINGET", "PUT", "GET", "APPENDS", "SETITEMS", "FRAME", "SHORT_BINUNICODE"):  # fmt: skip
        assert opcodes[name] > 0, name
    assert sum(counts(Path("/m")).values()) == len(CASES) > 800


@pytest.mark.parametrize("attack", [attack for attack in ATTACKS if attack.runs_code], ids=lambda a: a.name)
def test_the_code_running_cases_are_real(tmp_path, attack):
    """Unpickled freely (pickle.loads, in a child process), each code-running case does create
    its marker: the refusals below are refusals of working attacks."""
    marker = _marker(tmp_path)
    case = next(case for case in cases(marker) if case.attack is attack and case.protocol == 4)
    payload = tmp_path / "payload.pickle"
    payload.write_bytes(case.data)
    # Free unpickling imports what the pickle names: the child may fail after the side effect.
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.loads(open({str(payload)!r}, 'rb').read())"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert marker.exists(), attack.name


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_safe_loads_refuses_every_case_in_bounded_memory(tmp_path, case):
    marker = _marker(tmp_path)
    data = assemble(case.attack.program(marker), case.protocol, case.stack_global)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafePickle):
            safe_loads(data, case.allowed_modules, MAX_BYTES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, (case.id, peak)
    assert not marker.exists(), case.id
    assert "examples.regression.run" not in sys.modules


def test_the_upload_route_answers_4xx_and_stores_nothing(make_app, tmp_path):
    """Every case through POST /api/model/custom/<name>/ (Flask's test client, a loopback
    client): a 4xx JSON message, no model stored, no marker."""
    marker = _marker(tmp_path)
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_UNPICKLE_ALLOWED_MODULES=["examples"])
    client = app.test_client()
    statuses = Counter()
    for case in cases(marker):
        response = client.post("/api/model/custom/attack/", data=case.data)
        assert 400 <= response.status_code < 500, (case.id, response.status_code, response.data[:300])
        body = response.get_json()
        assert isinstance(body, dict) and body.get("message"), case.id
        statuses[response.status_code] += 1
    assert client.get("/api/models/").get_json() == {"models": []}
    assert not marker.exists()
    assert set(statuses) == {400}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_one_sync_worker_refuses_every_case_and_survives(tmp_path):
    """gunicorn with one sync worker: every case answers 4xx from the same worker, which then
    still serves, and whose memory stays within 100 MB of where it started."""
    marker = _marker(tmp_path)
    with serve(tmp_path / "server", workers=1, threads=1, access_log=True) as server:
        (pid,) = server.ready_pids()
        with requests.Session() as session:
            assert session.get(f"{server.url}/api/", timeout=10).status_code == 200
            baseline = _rss_kib(pid)
            peak = baseline
            for case in cases(marker):
                response = session.post(f"{server.url}/api/model/custom/attack/", data=case.data, timeout=60)
                assert 400 <= response.status_code < 500, (case.id, response.status_code, response.text[:300])
                assert response.json()["message"], case.id
                peak = max(peak, _rss_kib(pid))
            assert session.get(f"{server.url}/api/models/", timeout=10).json() == {"models": []}
        answered = server.requests()
        assert {entry.pid for entry in answered} == {pid}
        assert server.worker_pids() == {pid}, "the worker was replaced"
        assert len([entry for entry in answered if entry.method == "POST"]) == len(CASES)
        assert peak - baseline < 100 * 1024, (baseline, peak)
        assert "Traceback" not in server.log_text()
    assert not marker.exists()


def test_the_table_of_docs_security_matches_the_corpus():
    """docs/security.md lists, per attack class, the cases tried and refused: the corpus's."""
    table = {}
    for line in (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text().splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].isdigit():
            table[cells[0]] = (int(cells[2]), int(cells[3]))
    tried = counts(Path("/m"))
    assert table == {**{kind: (count, count) for kind, count in tried.items()}, "all": (len(CASES), len(CASES))}
