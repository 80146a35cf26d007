"""What a model server on this machine shares with the trainings: the CPU, or a GPU a training uses (the server's
processes found by the port they listen on, among the GPU's; or Ollama's own report of the GPU memory it holds)."""

from __future__ import annotations

import os

from autoresearch.endpoint import server_processes, shared_with_trainings

from conftest import nvidia_smi_on_path
from fake_llm import FakeLLM


def gpus_with(folder, pid: int) -> str:
    """PATH with an nvidia-smi that shows two GPUs and process `pid` computing on GPU 0."""
    return nvidia_smi_on_path(folder, {"--query-gpu=index,uuid": "0, GPU-aaaa\n1, GPU-bbbb\n",
                                       "--query-compute-apps=pid,gpu_uuid": f"{pid}, GPU-aaaa\n"})


def test_the_server_is_found_by_the_port_it_listens_on(fake_llm):
    assert os.getpid() in server_processes(fake_llm.base_url)  # the scripted server runs in this process


def test_a_server_on_this_machine_shares_the_cpu_with_trainings_on_no_gpu(fake_llm):
    assert shared_with_trainings(fake_llm.base_url, [None]) == "its CPU"
    assert shared_with_trainings("https://api.openai.com/v1", [None]) is None


def test_a_server_computing_on_a_trainings_gpu_shares_it_and_not_another(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", gpus_with(tmp_path / "bin", os.getpid()))
    assert shared_with_trainings(fake_llm.base_url, ["0"]) == "GPU 0"
    assert shared_with_trainings(fake_llm.base_url, ["1"]) is None
    monkeypatch.setenv("PATH", gpus_with(tmp_path / "other", 1))  # another process on GPU 0, not the server
    assert shared_with_trainings(fake_llm.base_url, ["0"]) is None


def test_a_server_that_only_says_it_holds_gpu_memory_shares_any_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", nvidia_smi_on_path(tmp_path / "bin", None))  # another user's server: no pid to see
    ollama = FakeLLM(gpu_memory=5_137_025_024)
    on_cpu = FakeLLM(gpu_memory=0)
    try:
        assert shared_with_trainings(ollama.base_url, ["1"]) == "GPU 1"
        assert shared_with_trainings(on_cpu.base_url, ["1"]) is None
    finally:
        ollama.close()
        on_cpu.close()
