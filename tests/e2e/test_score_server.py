"""`kvtui score` on the real bundled llama-server and model: teacher-forced KL divergence of q8_0 and q4_0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEXT = REPO / "benchmarks" / "data" / "lighthouse.txt"
pytestmark = pytest.mark.server


def score_refused(tmp_path: Path, server_binary, second_side: str) -> subprocess.CompletedProcess[str]:
    """`kvtui score` on an f16 side and a second side that it must refuse before any server starts."""
    profile = tmp_path / "refused.toml"
    profile.write_text('name = "refused"\n[model]\npath = "bundled"\n[[sides]]\nname = "f16"\ncache_type_k = "f16"\n'
                       'cache_type_v = "f16"\n[[sides]]\n' + second_side + '[prompt]\ntext = "hi"\n')
    return subprocess.run([sys.executable, "-m", "kvtui", "score", str(profile), "--text", str(TEXT),
                           "--server-bin", str(server_binary.path)], capture_output=True, text=True, timeout=120)


def test_score_json_on_the_real_server(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvtui", "score", str(REPO / "profiles" / "quality.toml"), "--text", str(TEXT),
         "--ctx", "256", "--chunks", "2", "--json", "--server-bin", str(server_binary.path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["base"] == "f16" and set(data["sides"]) == {"q8_0", "q4_0"}
    assert data["positions"] == 2 * (256 - 1 - 128) and data["chunks"] == 2 and data["ctx"] == 256
    for name, s in [*data["sides"].items(), ("noise", data["noise_floor"])]:
        assert s["positions"] == data["positions"] and s["top_k"] == data["top_k"], name
        assert 0 < s["same_top_pct"] <= 100 and s["kld_mean"] >= 0 and s["rms_dp_pct"] >= 0, name
        assert s["kld_median"] <= s["kld_p90"] <= s["kld_p99"] <= s["kld_p999"] <= s["kld_max"], name
        assert s["ppl_ratio"] > 0 and s["ppl_base"] > 1, name
    noise, q8, q4 = data["noise_floor"], data["sides"]["q8_0"], data["sides"]["q4_0"]
    # a second f16 server of the same build on the same CPU computes the same distributions
    assert noise["kld_mean"] < 1e-4 and noise["same_top_pct"] > 99
    assert 0 < q8["kld_mean"] < q4["kld_mean"] and q4["same_top_pct"] < q8["same_top_pct"]
    assert q8["ppl_base"] == pytest.approx(q4["ppl_base"])  # the same base positions for every side


def test_a_speculative_side_is_refused_before_any_server_starts(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    proc = score_refused(tmp_path, server_binary, 'name = "q8_0"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                                                  'extra_args = ["-md", "draft.gguf"]\n')
    assert proc.returncode == 2
    assert "q8_0: -md turns on speculative decoding" in proc.stderr and "kvtui: fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_attached_side_is_refused_before_any_server_starts(tmp_path: Path, server_binary,
                                                              no_leftover_servers) -> None:
    """kvtui score starts each side's server with -c set to its chunk length: it cannot score a server that runs
    already, and says where that is done (a run's own scoring). Nothing is started, no URL is contacted."""
    proc = score_refused(tmp_path, server_binary, 'name = "q8_0 there"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                                                  'url = "http://127.0.0.1:9"\n')
    assert proc.returncode == 2, proc.stderr
    assert "kvtui score starts its own servers, and q8_0 there is attached" in proc.stderr
    assert "kvtui: fix:" in proc.stderr and "kvtui run" in proc.stderr and "Traceback" not in proc.stderr


def test_scoring_a_generation_through_running_servers(tmp_path: Path, server_binary, model_path,
                                                       no_leftover_servers) -> None:
    """The API a normal run uses once generation ends: running servers, one prompt + generation segment."""
    import asyncio

    import httpx

    from kvtui.core.run.scoring import generation_segment, score_endpoints
    from kvtui.core.server.process import LlamaServer
    from kvtui.core.server.teacher import Endpoint, Teacher, new_client

    async def main() -> dict:
        servers = {name: LlamaServer(server_binary, ["-m", str(model_path), "-c", "512", "-np", "1", "-fa", "on",
                                                     "-ctk", name, "-ctv", name, "--host", "127.0.0.1", "-t", "1",
                                                     "--swa-full"], tmp_path / f"{name}.log")
                   for name in ("f16", "q8_0")}
        try:
            async with new_client() as http:
                for srv in servers.values():
                    await srv.start()
                    await srv.wait_ready(http)
                f16 = servers["f16"]
                r = await http.post(f16.base_url + "/completion", headers=f16.headers, timeout=120,
                                    json={"prompt": "The lighthouse keeper", "n_predict": 24, "temperature": 0,
                                          "return_tokens": True})
                generated = r.json()["tokens"]
                assert len(generated) == 24
                endpoints = [Endpoint(n, s.base_url, s.api_key) for n, s in servers.items()]
                seg = await generation_segment(Teacher(http, endpoints[0], 20), "The lighthouse keeper", generated)
                assert seg.positions == 24 and seg.tokens[seg.first + 1:] == tuple(generated)
                return await score_endpoints(http, endpoints, [seg], base="f16", top_k=20)
        except httpx.HTTPError as exc:  # pragma: no cover - shows the server log on failure
            raise AssertionError(str(exc)) from exc
        finally:
            for srv in servers.values():
                await srv.stop()

    scores = asyncio.run(main())
    q8 = scores["q8_0"]
    assert set(scores) == {"q8_0"} and q8.positions == 24 and q8.top_k == 20 and q8.base == "f16"
    assert 0 <= q8.kld_mean < 1 and 0 < q8.same_top_pct <= 100 and q8.ppl_ratio is not None
